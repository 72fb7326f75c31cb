"""Run folder, W&B / TensorBoard setup, metrics.json and the end-of-run summary.

    python train.py logger=none          # no tracking; logger=tensorboard for TensorBoard
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional

from medgpt.errors import UserError
from medgpt.leaderboard import override_key, swept_keys
from medgpt.runs import TENSORBOARD, is_main_process, process_start, sweep_name

log = logging.getLogger(__name__)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")


def sweep_job() -> Optional[Dict[str, Any]]:
    """In a Hydra multirun: the sweep folder, a W&B group named after it, the job number, its overrides and a
    short job name made from the swept ones (e.g. `3 hardware=lora lora_r=16`). None in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir)
    overrides = list(hc.overrides.task)
    swept = swept_keys(sweep_dir) | {override_key(k) for k in (hc.sweeper.get("params") or {})}
    shown = [o for o in overrides if override_key(o.split("=", 1)[0]) in swept] or overrides
    name = " ".join([str(hc.job.num)] + [f"{override_key(o.split('=', 1)[0]).rsplit('.', 1)[-1]}={o.split('=', 1)[1]}"
                                          for o in shown if "=" in o])
    return {"sweep_dir": str(sweep_dir), "group": sweep_name(sweep_dir), "job_num": hc.job.num,
            "overrides": overrides, "name": name}


def default_run_name(run_dir: Path) -> str:
    """W&B / trainer run name: the job name in a multirun, else <stage-model-hardware>/<stamp>."""
    job = sweep_job()
    return job["name"] if job else f"{run_dir.parent.name}/{run_dir.name}"


def first_step_timer(record: dict):
    """A trainer callback that writes seconds from process start to the end of the first training step."""
    from transformers import TrainerCallback

    started = process_start(os.getpid()) or time.time()

    class FirstStepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record.setdefault("seconds_to_first_step", round(time.time() - started, 2))

    return FirstStepTimer()


def git_state() -> Dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                    timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "deepspeed", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def start_logger(logger_cfg, run_dir: Path, run_name: str, config: dict) -> Dict[str, Any]:
    """Start W&B (offline unless WANDB_MODE says otherwise) or point TensorBoard at the run folder.
    Returns trainer args: report_to and run_name."""
    if logger_cfg.name == "none" or not is_main_process():
        return {"report_to": "none", "run_name": run_name}
    if logger_cfg.name == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / TENSORBOARD)
        return {"report_to": ["tensorboard"], "run_name": run_name}
    if logger_cfg.name != "wandb":
        raise UserError(f"logger={logger_cfg.name}: use wandb, tensorboard or none")
    import wandb

    mode = os.environ.get("WANDB_MODE", logger_cfg.mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    job = sweep_job() or {}
    # the composed config sits under its own key: the trainer's callback overwrites same-named top-level keys
    # one W&B run per run folder: a resumed launch continues it (its id comes from the folder, resume="allow")
    wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, name=run_name, id=wandb_run_id(run_dir),
               resume="allow",
               group=logger_cfg.group or job.get("group"),
               tags=list(logger_cfg.tags) or None, notes=logger_cfg.notes, dir=str(run_dir), mode=mode,
               config={"cfg": config, "run_dir": str(run_dir), **git_state(),
                       **{k: job[k] for k in ("sweep_dir", "job_num", "overrides") if k in job}})
    return {"report_to": ["wandb"], "run_name": run_name}


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: the same for every launch in it (first run and resumes), different for
    every folder (its absolute path, which holds the run stamp)."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode("utf-8")).hexdigest()[:16]


def wandb_location() -> Optional[str]:
    try:
        import wandb

        run = wandb.run
        if run is None:
            return None
        return run.url or run.dir
    except Exception:
        return None


def finish_logger(logger_cfg, exit_code: int = 0, model_dir: Optional[Path] = None) -> None:
    """Close the W&B run; with logger.log_model=true first log model_dir (the run's final/) as an artifact."""
    if logger_cfg.name == "wandb" and is_main_process():
        import wandb

        if wandb.run is None:
            return
        if logger_cfg.log_model and model_dir is not None and Path(model_dir).is_dir():
            artifact = wandb.Artifact(f"model-{wandb.run.id}", type="model",
                                      metadata={"run_dir": str(Path(model_dir).parent)})
            artifact.add_dir(str(model_dir))
            wandb.log_artifact(artifact, aliases=["final"])
        wandb.finish(exit_code=exit_code)


class Timer:
    def __init__(self):
        self.start = time.time()

    def elapsed(self) -> float:
        return round(time.time() - self.start, 3)
