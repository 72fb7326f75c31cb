"""Typed schema of the composed run config: one place for our own defaults and their meaning.

Trainer settings are *not* declared here: `stage.args` is a `{_target_: trl.SFTConfig, ...}` node and is
checked against that class's own fields (see `check_trainer_args`). Everything else is a dataclass, so a
misspelt key (`data.train_filez=...`) or a wrong type fails while Hydra composes, naming the key.

A setting that more than one node can give (max length, seeds, precision, LoRA targets, gradient checkpointing, ...)
is resolved once, by `resolve(cfg, device) -> RunSettings`, right after composition; everything downstream reads
that record (see RunSettings for each field's precedence).

    python train.py --cfg job        # print the composed, validated config
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from medgpt.errors import UserError
from medgpt.runs import run_folder, run_stamp, sweep_stamp, world_size


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str = MISSING  # hub id, local folder, a run's final/, or "tiny" for the embedded model
    template: str = "chatml"  # a Jinja file under medgpt/modeling/templates/
    # extra variables for the chat template at training and serving, e.g. {enable_thinking: false} (Qwen3-style)
    chat_template_kwargs: Dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    lora_target_modules: Any = "all-linear"  # "all-linear" or a list of module names
    max_length: int = 2048  # tokens per sample, unless data.max_length or stage.args.max_length says (RunSettings)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2 | None (library default)
    rope_scaling: Dict[str, Any] = field(default_factory=dict)  # {type: linear|dynamic|yarn, factor: <n>|auto}
    adapter_merge: bool = False  # when path is a LoRA adapter: merge it into the base before training
    family: Optional[str] = None
    licence: Optional[str] = None  # what the weights' licence allows (shown in docs/models.md), for ready configs
    tiny: Optional[Dict[str, Any]] = None  # shape of the embedded model (model=tiny only)


@dataclass
class StageConfig:
    name: str = MISSING
    kind: str = "train"  # train | eval: the protocol stage.module implements (medgpt/training/stage.py)
    module: str = MISSING  # medgpt.stages.<name>: its build_trainer() wires the trainer
    formats: List[str] = field(default_factory=list)  # data formats this stage accepts
    args: Any = MISSING  # {_target_: trl.XConfig, ...}: any field of that class
    reward_model: Optional[str] = None  # ppo/grpo: path of a run's final/ from stage=rm
    reward_funcs: Any = None  # grpo/ppo: list of {_target_: ...} reward functions
    teacher: Optional[str] = None  # distill: the teacher (hub id, model folder or run folder), same tokenizer
    reference: str = "auto"  # dpo/kto: auto | copy | none (adapter-disabled reference with LoRA)
    batching: str = "token_budget"  # sft/pt/rm batches: token_budget | group_by_length | random (training/batching.py)
    tokens_per_batch: Optional[int] = None  # token_budget: padded tokens per batch (default batch size x max_length)
    fused_lm_head: bool = False  # sft/pt: TRL's fused LM head instead of medgpt's chunked one (both memory-bounded)


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
    max_record_mb: float = 16.0  # a longer record (one line of a .jsonl/.txt) is refused without being read
    max_length: Optional[int] = None  # tokens per sample: beats model.max_length, not stage.args.max_length
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
    lora_target_modules: Any = None  # None: the model config's list (RunSettings.lora_target_modules)
    modules_to_save: Optional[List[str]] = None
    freeze_trainable_layers: int = 2  # freeze: train only the last N layers ...
    freeze_trainable_modules: List[str] = field(default_factory=list)  # ... and/or these named modules
    gradient_checkpointing: bool = False  # unless stage.args.gradient_checkpointing says (RunSettings)
    deepspeed: Any = None  # a dict from hardware/deepspeed/<zeroN>
    fsdp: Any = None  # a dict from hardware/fsdp/<name>: PyTorch FSDP2 (fully_shard) through the Trainer
    auto: Any = None  # hardware=auto: the machine to plan for and the candidates (conf/hardware/auto.yaml)
    args: Dict[str, Any] = field(default_factory=dict)  # extra trainer args this hardware needs (not RunSettings')


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
    # benchmark suites (eval=medical_zh | medical_en; medgpt/evaluation/suite.py, docs/evaluation.md)
    suite: Optional[str] = None  # the preset group's name: metrics <suite>/macro_accuracy, suite.md
    benchmarks: Dict[str, Any] = field(default_factory=dict)  # name -> conf/benchmark/<name>.yaml
    methods: List[str] = field(default_factory=lambda: ["loglik", "generate"])  # how suites score an MCQ
    backend: str = "auto"  # auto (vllm on CUDA when installed, else hf) | hf | vllm | <module>:<Scorer class>
    hub_root: Optional[str] = None  # local mirror of the hub: <root>/<dataset id>/... read instead of the hub
    limit: Optional[int] = None  # questions per benchmark (null: all)


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
    resume: Optional[str] = None  # auto | <run folder> | <run folder>/checkpoints/checkpoint-N (medgpt/runs.py, training/checkpoints.py)
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
OPEN_NODES = ("stage.args.", "hardware.args.", "model.tiny.", "model.rope_scaling.", "model.chat_template_kwargs.",
              "data.columns.")


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


# ---- credentials: never in the run folder, W&B or TensorBoard ----

CREDENTIAL_KEY = re.compile(r"(?:^|[_.-])(?:token|secret|password|passwd|api_?key|access_?key|private_?key|"
                            r"secret_?key|credentials?|auth)$", re.IGNORECASE)
NOT_CREDENTIAL = re.compile(r"^(?:pad|eos|bos|unk|sep|cls|mask|image|audio|video)_token$", re.IGNORECASE)
REFUSED_KEYS = ("hub_token", "push_to_hub_token")  # trainer args that carry a credential: HF_TOKEN instead
REDACTED = "<redacted>"


def is_credential(key: Any) -> bool:
    name = str(key).lstrip("+~").rsplit(".", 1)[-1]
    return bool(CREDENTIAL_KEY.search(name)) and not NOT_CREDENTIAL.match(name)


def _env_secrets() -> List[str]:
    """Values of environment variables named like credentials (HF_TOKEN, WANDB_API_KEY, ...), 8+ characters."""
    return sorted((v for k, v in os.environ.items() if is_credential(k.lower()) and len(v) >= 8), key=len,
                  reverse=True)


def redact(node: Any, _secrets: Optional[List[str]] = None) -> Any:
    """A copy of a resolved config (dicts, lists; override strings `key=value`) with the values of credential-like
    keys replaced by REDACTED, and any credential from the environment (an ${oc.env:...} interpolation into any
    key) cut out of every string."""
    secrets = _env_secrets() if _secrets is None else _secrets
    if isinstance(node, dict):
        return {k: REDACTED if is_credential(k) and isinstance(v, str) and v else redact(v, secrets)
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact(v, secrets) for v in node]
    if isinstance(node, str):
        key, sep, value = node.partition("=")
        if sep and value and " " not in key and is_credential(key):
            node = f"{key}={REDACTED}"
        for secret in secrets:
            node = node.replace(secret, REDACTED)
    return node


def check_credentials(resolved: dict) -> None:
    """A token given as a trainer arg (stage.args.hub_token=...) is refused: it would be written to the run's
    records; huggingface_hub reads HF_TOKEN from the environment."""
    for key, value in flat_config(resolved).items():
        if key.rsplit(".", 1)[-1] in REFUSED_KEYS and value:
            raise UserError(f"{key}: do not pass a token in the config (it would be recorded with the run); set the "
                            f"HF_TOKEN environment variable instead (huggingface_hub and the trainer read it)")


# What identifies a run: resuming it with another value is refused (stage.args, data, logger, ... may change, with a
# warning: max_steps, save_steps, a learning rate are deliberate changes).
RUN_IDENTITY = ("stage.", "model.", "hardware.")
RESUMABLE_CHANGES = ("stage.args.", "resume", "run_name")


def flat_config(node: Any, prefix: str = "") -> Dict[str, Any]:
    """{"stage.args.max_steps": 8, ...}: a resolved config as dotted keys."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat_config(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def resume_conflicts(first: dict, now: dict) -> Tuple[List[str], List[str]]:
    """(refused, changed): keys whose value differs between a run's first launch and this resume. Refused: the
    run's identity (RUN_IDENTITY: another stage, model or hardware); changed: everything else (resume aside)."""
    old, new = flat_config(first), flat_config(now)
    differ = sorted(k for k in old.keys() | new.keys() if k != "resume" and old.get(k) != new.get(k))
    refused = [k for k in differ if k.startswith(RUN_IDENTITY) and not k.startswith(RESUMABLE_CHANGES)]
    return refused, [k for k in differ if k not in refused]


def describe_conflicts(first: dict, now: dict, keys: List[str]) -> str:
    old, new = flat_config(first), flat_config(now)
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:8]) + (" ..." if len(keys) > 8 else "")


def check_resume(first: dict, now: dict, run_dir) -> List[str]:
    """A resume of the run whose first launch's config is `first`: refused (UserError naming the differences) when
    it would change the run's stage, model or hardware; else the other keys that changed (logged by the caller)."""
    refused, changed = resume_conflicts(first, now)
    if refused:
        raise UserError(f"resume: {run_dir} is a run of another stage, model or hardware "
                        f"({describe_conflicts(first, now, refused)}); resume it with its own overrides, or start "
                        f"a fresh run (drop resume=)")
    return changed


# ------------------------------------------------------------------------------------------------------------------
# The run's effective settings: one resolver, one record


GPU_DEVICE = {"cuda": True, "bf16": True}  # resolve(cfg, GPU_DEVICE): the run as a bf16 GPU would train it
# (medgpt estimate, medgpt data inspect: commands that plan a run rather than run it here)
PRECISIONS = ("fp32", "bf16", "fp16")
# stage.args fields that RunSettings resolves (from stage.args and the other nodes): hardware.args must not set them
RESOLVED_TRAINER_ARGS = ("max_length", "seed", "data_seed", "bf16", "fp16", "use_cpu", "gradient_checkpointing",
                         "per_device_train_batch_size")


@dataclass(frozen=True)
class RunSettings:
    """Every setting that more than one config node can give, resolved once by `resolve(cfg, device)` right after
    composition. Trainer args, data preparation and its cache key, `medgpt data inspect`, the memory estimate, RoPE
    `factor: auto` and evaluation read these fields, never the nodes. An explicit stage.args value (the trainer's own
    name for the setting) beats the data node, which beats the model / hardware node; null counts as not given.
    `sources` names the key each value came from (for messages: "raise stage.args.max_length")."""

    max_length: int  # tokens per sample: stage.args.max_length > data.max_length > model.max_length
    seed: int  # stage.args.seed > seed
    data_seed: int  # eval split, stream shuffle, batch order: stage.args.data_seed > the seed above
    precision: str  # fp32 | bf16 | fp16: stage.args.bf16/fp16 > hardware.precision (auto: by device, resolve_precision)
    cuda: bool  # trains on a CUDA GPU: the device given to resolve(), unless stage.args.use_cpu=true
    lora_target_modules: Union[str, Tuple[str, ...]]  # hardware.lora_target_modules > model.lora_target_modules
    gradient_checkpointing: bool  # stage.args.gradient_checkpointing > hardware.gradient_checkpointing
    per_device_train_batch_size: Optional[int]  # stage.args > the trainer config's default; None: no trainer (eval)
    tokens_per_batch: Optional[int]  # token_budget batches: stage.tokens_per_batch > per-device batch x max_length
    template: str  # chat template: model.template
    chat_template_kwargs: Dict[str, Any] = field(default_factory=dict, compare=False)  # model.chat_template_kwargs
    sources: Dict[str, str] = field(default_factory=dict, compare=False)  # setting -> the key that gave it
    fsdp: bool = False  # hardware/fsdp: checkpointing is FSDP's own (hardware.fsdp_config), not the trainer's
    plan: Optional[Dict[str, Any]] = field(default=None, compare=False)  # hardware=auto: the decision (plan_hardware)

    def source(self, name: str) -> str:
        return self.sources.get(name, name)

    def trainer_args(self) -> Dict[str, Any]:
        """These settings under the trainer config's names (RESOLVED_TRAINER_ARGS)."""
        args = {"max_length": self.max_length, "seed": self.seed, "data_seed": self.data_seed,
                "bf16": self.precision == "bf16", "fp16": self.precision == "fp16", "use_cpu": not self.cuda,
                "gradient_checkpointing": self.gradient_checkpointing and not self.fsdp}
        if self.per_device_train_batch_size is not None:
            args["per_device_train_batch_size"] = self.per_device_train_batch_size
        return args

    def summary(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)} ({self.source(f.name)})"
                         for f in dataclasses.fields(self) if f.name not in ("sources", "plan"))


# hardware=auto's planner: (cfg, settings, machine, global batch, fixed checkpointing or None) -> the decision record
# with "hardware" (the chosen node) and "chosen" (micro batch, accumulation). medgpt.modeling.estimate.plan is the
# one the run and `medgpt estimate` pass (the estimator sits above this module).
Planner = Callable[..., Dict[str, Any]]


def resolve(cfg: DictConfig, device: Dict[str, Any], planner: Optional[Planner] = None) -> RunSettings:
    """The run's effective settings, each derived here and nowhere else (precedence: RunSettings' fields).
    device: {"cuda": bool, "bf16": bool} (+ "gpus", "memory_gb" for hardware=auto), as
    medgpt.modeling.hardware.device_info() detects it, or GPU_DEVICE. hardware=auto: plan_hardware first replaces
    the hardware node (and the micro batch / accumulation) by the planner's choice, so everything downstream, and
    config.yaml, sees the hardware that runs."""
    if cfg.hardware.get("auto") is not None:
        record = plan_hardware(cfg, device, planner)
        settings = _resolve(cfg, device)
        sources = dict(settings.sources, per_device_train_batch_size="hardware=auto")
        if sources["gradient_checkpointing"] == "hardware.gradient_checkpointing":
            sources["gradient_checkpointing"] = "hardware=auto"
        return dataclasses.replace(settings, plan=record, sources=sources)
    return _resolve(cfg, device)


def plan_hardware(cfg: DictConfig, device: Dict[str, Any], planner: Optional[Planner]) -> Dict[str, Any]:
    """hardware=auto: the machine (hardware.auto.gpus / memory_gb, else the visible devices), the configured global
    batch (per-device batch x accumulation x GPUs), the planner's decision applied to cfg. Returns the record."""
    if planner is None:
        raise UserError("hardware=auto is planned by training and `medgpt estimate`; name a hardware here "
                        "(hardware=lora, ...)")
    hw = cfg.hardware
    if hw.deepspeed or hw.get("fsdp"):
        raise UserError("hardware=auto chooses ZeRO or FSDP itself: drop hardware/deepspeed=... and hardware/fsdp=...")
    machine = machine_of(hw.auto, device)
    if world_size() > 1 and world_size() != max(machine["gpus"], 1):
        raise UserError(f"hardware=auto plans for {machine['gpus']} GPU(s) but this launch has WORLD_SIZE="
                        f"{world_size()} processes: launch one process per GPU, or set hardware.auto.gpus="
                        f"{world_size()}")
    args = cfg.stage.args
    batch = args.get("per_device_train_batch_size") or trainer_default(args, "per_device_train_batch_size") or 1
    accumulation = args.get("gradient_accumulation_steps") or trainer_default(args, "gradient_accumulation_steps")
    world = max(machine["gpus"], 1)
    global_batch = int(batch) * int(accumulation or 1) * world
    record = planner(cfg, _resolve(cfg, device), machine, global_batch, args.get("gradient_checkpointing"))
    cfg.hardware = OmegaConf.merge(OmegaConf.structured(HardwareConfig), record["hardware"])
    with open_dict(cfg.stage.args):
        cfg.stage.args.per_device_train_batch_size = record["chosen"]["per_device_train_batch_size"]
        cfg.stage.args.gradient_accumulation_steps = record["chosen"]["gradient_accumulation_steps"]
    return record


def machine_of(auto: Any, device: Dict[str, Any]) -> Dict[str, Any]:
    """The machine hardware=auto plans for: hardware.auto.gpus / memory_gb where given, else the visible devices
    (device: medgpt.modeling.hardware.device_info())."""
    gpus, memory, source = auto.get("gpus"), auto.get("memory_gb"), []
    source.append("gpus: " + ("visible" if gpus is None else "hardware.auto.gpus"))
    if gpus is None:
        gpus = int(device.get("gpus") or 0)
    if memory is None:
        if gpus and not device.get("gpus"):
            raise UserError(f"hardware.auto.gpus={gpus} plans for GPUs this machine does not have: give their memory "
                            f"too, e.g. hardware.auto.memory_gb=80")
        memory = float(device.get("memory_gb") or 0)
        source.append("memory: visible" if gpus else "memory: this machine's RAM")
    else:
        source.append("memory: hardware.auto.memory_gb")
    if int(gpus) < 0 or float(memory) <= 0:
        raise UserError(f"hardware.auto.gpus={gpus}, hardware.auto.memory_gb={memory}: give gpus >= 0 and "
                        f"memory_gb > 0")
    ram = auto.get("ram_gb")
    ram = float(ram) if ram is not None else float(device.get("ram_gb") or 0)
    return {"gpus": int(gpus), "memory_gb": float(memory), "ram_gb": ram, "source": ", ".join(source)}


def _resolve(cfg: DictConfig, device: Dict[str, Any]) -> RunSettings:
    check_hardware_args(cfg.hardware)
    args, sources = cfg.stage.args, {}

    def pick(name: str, *candidates: Tuple[str, Any]) -> Any:
        key, value = next(((k, v) for k, v in candidates if v is not None), candidates[-1])
        sources[name] = key
        return value

    max_length = pick("max_length", ("stage.args.max_length", args.get("max_length")),
                      ("data.max_length", cfg.data.max_length), ("model.max_length", cfg.model.max_length))
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise UserError(f"{sources['max_length']}={max_length}: give a positive number of tokens per sample")
    seed = pick("seed", ("stage.args.seed", args.get("seed")), ("seed", cfg.seed))
    data_seed = pick("data_seed", ("stage.args.data_seed", args.get("data_seed")), (sources["seed"], seed))
    cuda = bool(device["cuda"]) and not args.get("use_cpu")
    sources["cuda"] = "stage.args.use_cpu" if device["cuda"] and not cuda else "device"
    precision, sources["precision"] = run_precision(cfg, {"cuda": cuda, "bf16": cuda and bool(device["bf16"])})
    targets = pick("lora_target_modules", ("hardware.lora_target_modules", cfg.hardware.lora_target_modules),
                   ("model.lora_target_modules", cfg.model.lora_target_modules), ("default", "all-linear"))
    checkpointing = pick("gradient_checkpointing", ("stage.args.gradient_checkpointing",
                                                    args.get("gradient_checkpointing")),
                         ("hardware.gradient_checkpointing", cfg.hardware.gradient_checkpointing))
    batch = pick("per_device_train_batch_size", ("stage.args.per_device_train_batch_size",
                                                 args.get("per_device_train_batch_size")),
                 ("the trainer config's default", trainer_default(args, "per_device_train_batch_size")))
    tokens = pick("tokens_per_batch", ("stage.tokens_per_batch", cfg.stage.tokens_per_batch),
                  ("per_device_train_batch_size x max_length",
                   batch * max_length if batch is not None else None))
    sources["template"] = "model.template"
    sources["chat_template_kwargs"] = "model.chat_template_kwargs"
    return RunSettings(max_length=max_length, seed=seed, data_seed=data_seed, precision=precision, cuda=cuda,
                       lora_target_modules=lora_targets(targets, sources["lora_target_modules"]),
                       gradient_checkpointing=bool(checkpointing), per_device_train_batch_size=batch,
                       tokens_per_batch=tokens, template=cfg.model.template,
                       chat_template_kwargs=chat_template_kwargs(cfg.model), sources=sources,
                       fsdp=bool(cfg.hardware.get("fsdp")))


def chat_template_kwargs(model_cfg) -> Dict[str, Any]:
    """model.chat_template_kwargs as a plain dict: the extra template variables at training and serving."""
    value = model_cfg.get("chat_template_kwargs")
    if value is None:
        return {}
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else dict(value)
    if not isinstance(value, dict):
        raise UserError(f"model.chat_template_kwargs={value!r}: give a mapping, e.g. "
                        "model.chat_template_kwargs={enable_thinking:false}")
    return value


def check_hardware_args(hw) -> None:
    """hardware.args may add trainer args, but not one RunSettings resolves from its own keys."""
    owned = [k for k in RESOLVED_TRAINER_ARGS if k in (hw.args or {})]
    if owned:
        key = owned[0]
        other = {"bf16": "hardware.precision", "fp16": "hardware.precision", "seed": "seed",
                 "gradient_checkpointing": "hardware.gradient_checkpointing"}.get(key)
        raise UserError(f"hardware.args.{key}: a run setting resolved from its own keys (medgpt.config.RunSettings): "
                        f"set stage.args.{key}{f' or {other}' if other else ''} instead")


def resolve_precision(precision: str, device: Dict[str, bool]) -> str:
    """hardware.precision on a device: auto -> bf16 on a GPU that has it, fp16 on another GPU, fp32 without one."""
    if precision == "auto":
        return "bf16" if device["bf16"] else ("fp16" if device["cuda"] else "fp32")
    if precision in ("bf16", "fp16") and not device["cuda"]:
        raise UserError(f"hardware.precision={precision} needs a CUDA GPU; none is visible. Use hardware=cpu "
                        f"(fp32) or hardware.precision=fp32")
    if precision not in PRECISIONS:
        raise UserError(f"hardware.precision={precision}: use auto, fp32, bf16 or fp16")
    return precision


def run_precision(cfg: DictConfig, device: Dict[str, bool]) -> Tuple[str, str]:
    """(precision, the key that decided it): stage.args.bf16/fp16=true name it; else hardware.precision; and
    stage.args.bf16/fp16=false turn off the precision hardware.precision resolved to (fp32 then)."""
    bf16, fp16 = cfg.stage.args.get("bf16"), cfg.stage.args.get("fp16")
    if bf16 and fp16:
        raise UserError("stage.args.bf16 and stage.args.fp16 are both true: keep one, or drop both and set "
                        "hardware.precision=bf16|fp16")
    if bf16 or fp16:
        key = "stage.args.bf16" if bf16 else "stage.args.fp16"
        if not device["cuda"]:
            raise UserError(f"{key}=true needs a CUDA GPU; none is visible. Drop it (hardware.precision decides: "
                            f"fp32 without a GPU)")
        return ("bf16" if bf16 else "fp16"), key
    precision = resolve_precision(cfg.hardware.precision, device)
    if {"bf16": bf16, "fp16": fp16}.get(precision) is False:
        return "fp32", f"stage.args.{precision}"
    return precision, "hardware.precision"


def lora_targets(targets: Any, key: str) -> Union[str, Tuple[str, ...]]:
    """"all-linear" or a tuple of module names."""
    if isinstance(targets, str):
        return targets
    names = tuple(str(t) for t in targets)
    if not names:
        raise UserError(f"{key}=[]: name the modules LoRA adapts, or null for the model config's list")
    return names


def trainer_default(args: Any, name: str) -> Any:
    """A field's default in stage.args' trainer config class (None without one, as stage=eval has)."""
    target = args.get("_target_")
    if not target:
        return None
    return import_object(target).__dataclass_fields__[name].default
