"""One run, in steps that share one record (Run): set_up (stage, settings, config.yaml, tokenizer) -> fit (data ->
trainer args and model -> the stage's trainer -> train -> final/) or evaluate_model (stage.kind=eval) -> record
(metrics.json). Bad input fails before the model is loaded.

    python train.py stage=sft model=tiny hardware=lora stage.args.max_steps=5
"""
from __future__ import annotations

import logging
import math
import sys
import traceback
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from medgpt import runs
from medgpt.config import (RunSettings, chat_template_kwargs, check_credentials, check_resume, check_trainer_args,
                           redact, resolve, to_container)
from medgpt.data import load_data
from medgpt.data.cache import prepare_split
from medgpt.data.streaming import streaming_datasets
from medgpt.errors import UserError
from medgpt.evaluation.tasks import after_train_tasks, evaluate_after_train
from medgpt.modeling import hardware
from medgpt.modeling.estimate import plan as plan_hardware, plan_report, warn_if_too_large
from medgpt.modeling.load import load_model, load_tokenizer, resolve_path, set_generation_defaults
from medgpt.training import checkpoints, guard, tracking
from medgpt.training.cluster import export_submitit_ranks, free_port
from medgpt.training.stage import Stage, load_stage

log = logging.getLogger("medgpt")


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    group = runs.run_group(cfg.output_root, cfg.stage.name, cfg.model.name, cfg.hardware.name)
    return Path(runs.run_folder(str(group), cfg.resume))


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def main(cfg: DictConfig) -> Optional[float]:
    """Hydra task: train, and turn failures into a recorded status. User errors print one line, no traceback.
    Returns cfg.objective's value so Hydra sweepers (optuna) can minimise it."""

    export_submitit_ranks()  # a SLURM job of N tasks (hydra/launcher=slurm): one rank per task
    run_dir = run_dir_of(cfg)
    sys.argv = redact(sys.argv)  # libraries record the command line (W&B's metadata): never a credential
    try:
        runs.lock_run_folder(run_dir)  # held already after medgpt.cli.ClaimRunFolder; a multirun's job locks here
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    run_dir.mkdir(parents=True, exist_ok=True)
    timer = tracking.Timer()
    metrics: Dict[str, Any] = {"status": "running", "run_dir": str(run_dir)}
    try:
        metrics = train(cfg, run_dir)
    except UserError as e:
        _record_failure(run_dir, cfg, timer, f"{e}", user_error=True)
        if is_multirun():
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        _record_failure(run_dir, cfg, timer, f"{type(e).__name__}: {e}", tb=traceback.format_exc())
        if is_multirun():  # a sweep records the failed job and goes on
            return None
        raise
    value = metrics.get(cfg.objective)
    return float(value) if isinstance(value, (int, float)) else None


def _record_failure(run_dir: Path, cfg, timer, message: str, tb: str = "", user_error: bool = False) -> None:
    log.error("run failed: %s%s", message, "\n" + tb if tb else "")
    if runs.is_main_process():
        runs.write_json(run_dir / runs.METRICS, {
            "status": "failed", "error": message, "user_error": user_error, "stage": cfg.stage.name,
            "model": cfg.model.name, "hardware": cfg.hardware.name, "runtime_s": timer.elapsed()})
    tracking.finish_logger(cfg.logger, exit_code=1)


def prepare_datasets(cfg: DictConfig, stage, tokenizer, settings: RunSettings):

    if cfg.data.streaming:
        return streaming_datasets(cfg, stage, tokenizer, settings)
    train_records, eval_records = load_data(cfg.data, cfg.stage, seed=settings.data_seed)
    train_dataset, counts = prepare_split("train", stage, train_records.rows, tokenizer, cfg, settings)
    eval_dataset, eval_counts = (prepare_split("eval", stage, eval_records.rows, tokenizer, cfg, settings)
                                 if eval_records else (None, {}))
    report = {"train_records": len(train_records.rows), "eval_records": len(eval_records.rows) if eval_records else 0,
              "formats": dict(train_records.formats), "skipped_records": dict(train_records.skipped),
              **train_records.cleaned, **{k: v for k, v in counts.items()}}
    if "eval_skipped" in eval_counts:  # every eval sample dropped: the run trains without evaluation
        report["eval_skipped"] = eval_counts["eval_skipped"]
    if train_records.sources:
        report["mix"] = dict(train_records.sources)
    if eval_records and eval_records.skipped:
        report["skipped_eval_records"] = dict(eval_records.skipped)
    for key in ("truncated", "dropped_overlong", "dropped_no_loss"):
        if counts.get(key):
            log.warning("%s: %d sample(s) (data.overlong=%s, max_length=%s from %s)", key, counts[key],
                        cfg.data.overlong, settings.max_length, settings.source("max_length"))
    return train_dataset, eval_dataset, report


def trainer_args(cfg: DictConfig, settings: RunSettings, config_class, run_dir: Path, logger_args: dict):
    """Instantiate stage.args with the run's settings (max length, seeds, precision, gradient checkpointing: already
    resolved from stage.args and the other nodes by medgpt.config.resolve); the run's own defaults (DeepSpeed dict,
    folders, logger, hardware.args) fill in what the user did not set."""
    from hydra.utils import instantiate

    deepspeed = hardware.deepspeed_config(cfg.hardware.deepspeed, settings.precision)
    if deepspeed is not None and not settings.cuda:
        _init_cpu_deepspeed()
    fsdp = hardware.fsdp_config(cfg.hardware.fsdp, settings.gradient_checkpointing)
    derived = {
        **({"ddp_backend": "gloo"} if not settings.cuda and runs.world_size() > 1 else {}),
        "deepspeed": deepspeed,
        **({"fsdp": True, "fsdp_config": fsdp} if fsdp else {}),
        "output_dir": str(run_dir / runs.CHECKPOINTS),
        "logging_dir": str(run_dir / runs.TENSORBOARD),
        "include_num_input_tokens_seen": "non_padding",
        **dict(cfg.hardware.args),
        **logger_args,
    }
    if derived["deepspeed"] is not None and runs.is_main_process():
        runs.write_json(run_dir / runs.DEEPSPEED, derived["deepspeed"])
    user_set = set(cfg.stage.args.keys())
    kwargs = {**{k: v for k, v in derived.items() if k not in user_set}, **settings.trainer_args()}
    known = {f for f in config_class.__dataclass_fields__}
    return instantiate(cfg.stage.args, _convert_="all", **{k: v for k, v in kwargs.items() if k in known})


def _init_cpu_deepspeed() -> None:
    """DeepSpeed on CPU: gloo, initialised before the training args (else ranks disagree on the world size); a
    plain `python train.py` gets the single-process rendezvous variables DeepSpeed would look for in MPI."""
    import os

    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    deepspeed.init_distributed(dist_backend="gloo")


@dataclass
class Run:
    """One launch as its steps see it: what was composed and resolved, and what each step adds."""
    cfg: DictConfig
    run_dir: Path
    stage: Stage
    settings: RunSettings
    resolved: Dict[str, Any]  # the composed config, as written to config.yaml
    tokenizer: Any
    trainer_config: Optional[type] = None  # stage.args' class (trl.SFTConfig, ...), checked; None for kind=eval
    resume_from: Optional[str] = None  # the checkpoint trainer.train() resumes from
    timer: tracking.Timer = field(default_factory=tracking.Timer)
    metrics: Dict[str, Any] = field(default_factory=dict)  # what metrics.json will hold


def train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """The run of cfg in run_dir: set up, then train (or evaluate, for stage.kind=eval), then record. Everything
    that can be checked without a model is checked before one loads."""
    run = set_up(cfg, run_dir)
    if cfg.stage.kind == "eval":
        run.metrics.update(evaluate_model(run))
    else:
        fit(run)
    return record(run)


def set_up(cfg: DictConfig, run_dir: Path) -> Run:
    """Stage, checkpoint to resume, effective settings, config.yaml + environment.json, seed, tokenizer."""
    import transformers

    _reset_peak_memory()  # jobs of a multirun share one process: each reports its own GPU peak
    stage = load_stage(cfg.stage)
    trains = cfg.stage.kind == "train"
    trainer_config = check_trainer_args(cfg) if trains else None
    resume_from = checkpoints.resume_checkpoint(cfg.resume, run_dir, cfg.allow_pickle) if trains else None
    device = hardware.device_info()
    settings = resolve(cfg, device, planner=plan_hardware)  # hardware=auto: cfg.hardware becomes the chosen one
    log.info("settings: %s", settings.summary())
    if settings.plan is not None and runs.is_main_process():
        print(plan_report(settings.plan), flush=True)
        runs.write_json(run_dir / runs.HARDWARE_PLAN, settings.plan)
    hardware.check_hardware(cfg, device)
    check_credentials(to_container(cfg))
    resolved = redact(to_container(cfg))  # config.yaml, .hydra/ and W&B never hold a credential
    # 0: the first launch; N (a resume): config.resume-N.yaml beside the first's. A fresh launch into a used folder
    # is refused before this (medgpt.cli.ClaimRunFolder, the pipeline); a caller of train() owns its folder.
    launch = runs.launch_number(run_dir) if cfg.resume else 0
    if launch and runs.is_main_process():
        first = OmegaConf.to_container(OmegaConf.load(run_dir / runs.CONFIG))
        changed = check_resume(first, resolved, run_dir)
        if changed:
            log.warning("resuming with a config that differs from the run's first launch in: %s",
                        ", ".join(changed))
    if runs.is_main_process():
        runs.launch_file(run_dir, runs.CONFIG, launch).write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)),
                                                                  encoding="utf-8")
        runs.write_json(runs.launch_file(run_dir, runs.ENVIRONMENT, launch),
                        redact({"versions": tracking.versions(), **tracking.git_state()}))
    transformers.set_seed(settings.seed)
    return Run(cfg, run_dir, stage, settings, resolved, load_tokenizer(cfg.model), trainer_config, resume_from,
               metrics={"stage": cfg.stage.name, "model": cfg.model.name, "hardware": cfg.hardware.name,
                        "run_dir": str(run_dir)})


def fit(run: Run) -> None:
    """Data, then logger, trainer args and model, then the stage's trainer; train; save final/."""
    cfg = run.cfg
    train_dataset, eval_dataset, data_report = prepare_datasets(cfg, run.stage, run.tokenizer, run.settings)
    log.info("data: %s", data_report)
    eval_tasks = after_train_tasks(cfg) if cfg.eval_after_train else None  # validated before the model loads
    trainer, nonfinite, timings = build_trainer(run, train_dataset, eval_dataset)
    result = trainer.train(resume_from_checkpoint=run.resume_from)

    run.metrics.update({**data_report, **timings, **_train_metrics(trainer, result), **nonfinite.report()})
    if eval_dataset is not None:
        run.metrics.update({k: v for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    final = runs.final_of(run.run_dir)
    trainer.save_model(str(final))
    if runs.is_main_process():
        _save_final_extras(final, cfg, trainer.model, run.tokenizer)
        if eval_tasks is not None:
            run.metrics.update(evaluate_after_train(cfg, run.run_dir, trainer.model, run.tokenizer, eval_tasks,
                                                    run.settings))
        runs.write_json(run.run_dir / runs.HISTORY, {"log_history": trainer.state.log_history})


def build_trainer(run: Run, train_dataset, eval_dataset):
    """The stage's trainer with medgpt's callbacks (first-step timer, atomic checkpoints, non-finite guard)."""
    cfg, settings = run.cfg, run.settings
    run_name = cfg.run_name or tracking.default_run_name(run.run_dir)
    logger_args = tracking.start_logger(cfg.logger, run.run_dir, run_name, run.resolved)
    args = trainer_args(cfg, settings, run.trainer_config, run.run_dir, logger_args)
    warn_if_too_large(cfg, settings)
    checkpoints.check_global_batch(args)
    model = load_model(cfg.model, cfg.hardware, settings, kind=run.stage.MODEL_KIND, tokenizer=run.tokenizer,
                       allow_pickle=cfg.allow_pickle)
    timings: Dict[str, Any] = {}
    atomic = checkpoints.atomic_saves(args)  # marks and rotates checkpoints (takes save_total_limit over)
    nonfinite = guard.NonFiniteGuard.from_config(cfg.guard, run.run_dir / runs.CHECKPOINTS)
    trainer = run.stage.build_trainer(cfg=cfg, settings=settings, model=model, tokenizer=run.tokenizer, args=args,
                                      train_dataset=train_dataset, eval_dataset=eval_dataset,
                                      callbacks=[tracking.first_step_timer(timings), atomic, nonfinite])
    return trainer, nonfinite, timings


def evaluate_model(run: Run) -> Dict[str, Any]:
    """stage.kind=eval: what to score loads first (stage.load), then the model (kind from stage.model_kind)."""
    cfg = run.cfg
    tasks = run.stage.load(cfg)
    tracking.start_logger(cfg.logger, run.run_dir, cfg.run_name or tracking.default_run_name(run.run_dir),
                          run.resolved)
    model = load_model(cfg.model, cfg.hardware, run.settings, kind=run.stage.model_kind(cfg), tokenizer=run.tokenizer,
                       allow_pickle=cfg.allow_pickle)
    return run.stage.run(cfg, run.run_dir, model, run.tokenizer, tasks, run.settings)


def record(run: Run) -> Dict[str, Any]:
    """metrics.json, the end-of-run summary (training runs), the logger closed (with final/ for a training run)."""
    run.metrics = {"status": "completed", **run.metrics, "runtime_s": run.timer.elapsed()}
    trained = run.cfg.stage.kind == "train"
    if runs.is_main_process():
        runs.write_json(run.run_dir / runs.METRICS, run.metrics)
        if trained:
            _print_summary(run.run_dir, run.metrics, run.cfg.logger.name)
    tracking.finish_logger(run.cfg.logger, model_dir=runs.final_of(run.run_dir) if trained else None)
    return run.metrics


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _train_metrics(trainer, result) -> Dict[str, Any]:
    import torch

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    out = {"train_loss": result.training_loss, "final_train_loss": losses[-1] if losses else None,
           "first_train_loss": losses[0] if losses else None, "global_step": trainer.state.global_step,
           "train_runtime": result.metrics.get("train_runtime"),
           "tokens_seen": int(trainer.state.num_input_tokens_seen or 0), "world_size": trainer.args.world_size,
           "global_batch_size": trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
           * trainer.args.world_size}
    runtime = out["train_runtime"] or 0
    out["tokens_per_second"] = round(out["tokens_seen"] / runtime, 2) if runtime else None
    if torch.cuda.is_available():
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    else:
        import resource

        out["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for key, value in list(out.items()):
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
    return out


def _save_final_extras(final: Path, cfg, model, tokenizer) -> None:
    """What final/ holds beside the weights: tokenizer, generation defaults, run info (no pickled args)."""
    tokenizer.save_pretrained(final)
    (final / runs.TRAINING_ARGS).unlink(missing_ok=True)  # a pickle; the run's config.yaml records the args
    base_model = getattr(model, "get_base_model", lambda: model)()
    if hasattr(base_model, "generation_config") and base_model.generation_config is not None:
        set_generation_defaults(base_model, tokenizer, cfg.model.template)
        base_model.generation_config.save_pretrained(final)
    source = resolve_path(cfg.model.path, cfg.model.tiny)
    runs.write_run_info(final, {
        "template": cfg.model.template,
        "chat_template_kwargs": chat_template_kwargs(cfg.model),
        "stage": cfg.stage.name, "model": cfg.model.name,
        "base_model": runs.adapter_base(str(final)), "source": runs.adapter_base(source) or source,
        "adapter": runs.is_adapter(final), "trust_remote_code": cfg.model.trust_remote_code,
        "quantization": cfg.hardware.quantization})


def _print_summary(run_dir: Path, metrics: Dict[str, Any], logger: str = "none") -> None:
    """One screen at the end of a run: where it is, how it went, where it is logged, what to run next."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"{'run folder':<17} {run_dir}", f"{'status':<17} {metrics.get('status')}"]
    for key in ("train_loss", "final_train_loss", "eval_loss", "global_step", "tokens_seen", "tokens_per_second",
                "train_runtime", "peak_memory_mb"):
        if metrics.get(key) is not None:
            lines.append(f"{key:<17} {fmt(metrics[key])}")
    where = tracking.wandb_location()
    if where:
        lines.append(f"{'wandb':<17} {where}")
        if not where.startswith("http"):  # offline: the folder to upload later
            lines.append(f"{'':<17} upload: wandb sync {Path(where).parent}")
    elif logger == "tensorboard":
        lines.append(f"{'tensorboard':<17} tensorboard --logdir {run_dir / runs.TENSORBOARD}")
    lines.append(f"{'chat':<17} medgpt chat {run_dir}")
    print("\n".join(["", "=" * 72, *lines, "=" * 72]), flush=True)
