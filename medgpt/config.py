"""Typed schema of the composed run config: one place for our own defaults and their meaning.

Trainer settings are *not* declared here: `stage.args` is a `{_target_: trl.SFTConfig, ...}` node and is
checked against that class's own fields (see `check_trainer_args`). Everything else is a dataclass, so a
misspelt key (`data.train_filez=...`) or a wrong type fails while Hydra composes, naming the key.

    python train.py --cfg job        # print the composed, validated config
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from medgpt.errors import UserError
from medgpt.runs import run_folder, run_stamp, sweep_stamp


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str = MISSING  # hub id, local folder, a run's final/, or "tiny" for the embedded model
    template: str = "chatml"  # a Jinja file under medgpt/modeling/templates/
    trust_remote_code: bool = False
    lora_target_modules: Any = "all-linear"  # "all-linear" or a list of module names
    max_length: int = 2048
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2 | None (library default)
    rope_scaling: Dict[str, Any] = field(default_factory=dict)  # {type: linear|dynamic|yarn, factor: <n>|auto}
    adapter_merge: bool = False  # when path is a LoRA adapter: merge it into the base before training
    family: Optional[str] = None
    tiny: Optional[Dict[str, Any]] = None  # shape of the embedded model (model=tiny only)


@dataclass
class StageConfig:
    name: str = MISSING
    module: str = MISSING  # medgpt.stages.<name>: its build_trainer() wires the trainer
    formats: List[str] = field(default_factory=list)  # data formats this stage accepts
    args: Any = MISSING  # {_target_: trl.XConfig, ...}: any field of that class
    reward_model: Optional[str] = None  # ppo/grpo: path of a run's final/ from stage=rm
    reward_funcs: Any = None  # grpo/ppo: list of {_target_: ...} reward functions
    reference: str = "auto"  # dpo/kto: auto | copy | none (adapter-disabled reference with LoRA)
    batching: str = "token_budget"  # sft/pt batches: token_budget | group_by_length | random (medgpt.training.batching)
    tokens_per_batch: Optional[int] = None  # token_budget: padded tokens per batch (default batch size x max length)
    fused_lm_head: bool = False  # sft/pt: TRL's fused LM head (no full-vocabulary logits): for big batch x vocabulary


@dataclass
class DataConfig:
    name: str = MISSING
    train_files: List[str] = field(default_factory=list)  # files, folders or globs (jsonl/json/txt/parquet)
    eval_files: List[str] = field(default_factory=list)
    format: Optional[str] = None  # detected when None; see medgpt.data.formats.FORMATS
    hub_name: Optional[str] = None  # a dataset on the hub, via datasets.load_dataset
    hub_subset: Optional[str] = None
    hub_split: str = "train"
    hub_data_files: Any = None  # some files of the hub dataset (names or globs), as load_dataset(data_files=...)
    columns: Dict[str, str] = field(default_factory=dict)  # rename source columns: {their_name: our_name}
    max_samples: Optional[int] = None
    eval_split: float = 0.0  # fraction held out for eval when no eval_files
    on_bad_record: str = "error"  # error | skip (skipped records are counted and reported)
    max_length: Optional[int] = None  # tokens per sample; model.max_length when None
    overlong: str = "truncate"  # truncate | drop | error, for samples longer than max_length
    block_size: int = 512  # pt: tokens per training block
    system_prompt: Optional[str] = None  # added to conversations that have none
    num_proc: Optional[int] = None  # tokenization workers
    cache: bool = True  # reuse tokenized datasets (keyed by data content, tokenizer, template, lengths)
    stages: List[str] = field(default_factory=list)  # stages this data serves (checked); empty: any stage
    mix: List[Any] = field(default_factory=list)  # [{name: <data config or file>, weight: w}, ...]; medgpt.data.mix
    streaming: bool = False  # pt/sft: read, tokenize and pack on the fly (needs stage.args.max_steps)


@dataclass
class HardwareConfig:
    name: str = MISSING
    method: str = "full"  # full | freeze | lora | dora
    quantization: Optional[str] = None  # None | 4bit | 8bit (QLoRA)
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16 | fp16
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: Any = None  # None: the model config's list
    modules_to_save: Optional[List[str]] = None
    freeze_trainable_layers: int = 2  # freeze: train only the last N layers ...
    freeze_trainable_modules: List[str] = field(default_factory=list)  # ... and/or these named modules
    gradient_checkpointing: bool = False
    deepspeed: Any = None  # a dict from hardware/deepspeed/<zeroN>
    args: Dict[str, Any] = field(default_factory=dict)  # extra trainer args this hardware needs


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | tensorboard | none
    project: str = "medgpt"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    notes: Optional[str] = None
    mode: str = "offline"  # offline | online (needs WANDB_API_KEY) | disabled
    log_model: bool = False


@dataclass
class GuardConfig:
    enabled: bool = True  # stop (or skip) on a non-finite loss or gradient norm; see medgpt/training/guard.py
    skip_nonfinite: bool = False  # skip such a step's update instead of stopping (counted in metrics.json)
    max_skipped: int = 10  # stop anyway once more steps than this were skipped


@dataclass
class EvalConfig:
    """What stage=eval and eval_after_train=true score (see docs/evaluation.md)."""
    files: List[str] = field(default_factory=list)  # mcq/qa/chat/text/preference files; stage=eval adds data.eval_files
    few_shot: int = 0  # solved examples from the same file, rendered as earlier chat turns
    mcq_scoring: str = "letter"  # letter: log-likelihood of the option letter | text: mean log-likelihood of its text
    batch_size: int = 8
    max_new_tokens: int = 64  # generative QA
    beta: float = 0.1  # preference files: implicit reward = beta * (log p_policy - log p_reference)
    reference: Optional[str] = "auto"  # preference files: auto (a LoRA's base / the run's source) | none | <path>
    predictions: bool = True  # write predictions/<file>.jsonl (question, prediction, gold, score)
    judge_url: Optional[str] = None  # OpenAI-compatible endpoint for LLM-as-judge on QA; off when None
    judge_model: str = "gpt-4o-mini"
    judge_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the judge's key (never the key itself)
    lm_eval_tasks: List[str] = field(default_factory=list)  # lm-evaluation-harness task names (needs lm-eval)
    lm_eval_include: List[str] = field(default_factory=list)  # folders of local lm-eval task YAMLs
    lm_eval_limit: Optional[int] = None  # examples per lm-eval task


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    stage: StageConfig = MISSING
    data: DataConfig = MISSING
    hardware: HardwareConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 42
    run_name: Optional[str] = None
    output_root: str = "outputs"
    resume: Optional[str] = None  # auto | <run folder> | <run folder>/checkpoints/checkpoint-N (medgpt/training/checkpoints.py)
    allow_pickle: bool = False  # load pickle (.bin) weights/checkpoints; off: safetensors only
    guard: GuardConfig = field(default_factory=GuardConfig)
    eval_after_train: bool = False  # score eval.files with the trained model; keys land as eval/<metric>
    eval: EvalConfig = field(default_factory=EvalConfig)
    objective: str = "train_loss"  # metrics.json key returned to Hydra sweepers (optuna minimises it)


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    cached = ("run_stamp", "sweep_stamp", "run_folder")
    for name, fn in (("run_stamp", run_stamp), ("sweep_stamp", sweep_stamp), ("demo", demo_file),
                     ("samples", sample_file), ("run_folder", run_folder)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=name in cached)


def demo_file(name: str) -> str:
    """${demo:sft_demo.jsonl}: a file of the project's own demo data, wherever the package is installed."""
    return str(Path(__file__).parent / "demo_data" / name)


def sample_file(name: str) -> str:
    """${samples:x.jsonl}: MedicalGPT's sample data, from $MEDGPT_SAMPLES or ../shared/data/medicalgpt-samples."""
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "medicalgpt-samples"
    return str(Path(os.environ.get("MEDGPT_SAMPLES", default)) / name)


# Nodes whose keys come from a library class or are free-form: an override may add a key there without "+"
# (`stage.args.max_steps=2`). stage.args keys are then checked against the trainer config class (check_trainer_args).
OPEN_NODES = ("stage.args.", "hardware.args.", "model.tiny.", "model.rope_scaling.", "data.columns.")


def normalize_overrides(overrides: List[str]) -> List[str]:
    """Turn `stage.args.max_steps=2` into `++stage.args.max_steps=2` (add or override), leave the rest alone."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        is_open = key.startswith(OPEN_NODES) or key + "." in OPEN_NODES  # a whole open node: model.rope_scaling={..}
        if "=" in item and is_open and not key.startswith(("+", "~")):
            item = "++" + item
        out.append(item)
    return out


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides, return_hydra_config: bool = False) -> DictConfig:
    """The run config exactly as `python train.py <overrides>` composes it (Hydra's Compose API), for the commands
    that take overrides (estimate, pipeline, data inspect, cluster) and for tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=normalize_overrides(list(overrides)),
                             return_hydra_config=return_hydra_config)


def import_object(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import '{path}': {e}") from None


def check_trainer_args(cfg: DictConfig) -> type:
    """Every key of stage.args must be a field of its _target_ class; returns that class."""
    args = cfg.stage.args
    target = args.get("_target_")
    if not target:
        raise UserError("stage.args needs a _target_ (e.g. trl.SFTConfig)")
    config_class = import_object(target)
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(k for k in args.keys() if k != "_target_" and k not in known)
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {difflib.get_close_matches(k, known, 1)[0]}?)"
                 if difflib.get_close_matches(k, known, 1) else k for k in unknown]
        raise UserError(f"stage.args: unknown field(s) for {target}: {', '.join(hints)}. "
                        f"Every field of {config_class.__name__} is settable as stage.args.<field>=...")
    return config_class


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
