"""The run folder: its layout and file names, where a launch writes (run stamps shared by every rank, resume=auto),
what a finished run leaves in final/, and which checkpoints in it can be trusted. Nothing else in medgpt names
these files or folders (tests/test_runs.py scans for them).

    <output_root>/
        runs/<stage>-<model>-<hardware>/<stamp>/     one launch (python train.py): a run folder
        multirun/<date>/<time>/                      one sweep (-m): multirun.yaml, leaderboard/ (medgpt sweep)
            <job>/                                   a run folder per job
        pipelines/<stamp>/                           medgpt pipeline: summary.json
            <n>-<stage>/                             a run folder per stage

    a run folder:
        config.yaml  environment.json  metrics.json  history.json  deepspeed.json  hardware_plan.json  train.log
        config.resume-N.yaml  environment.resume-N.json   (launch N+1, a resume: the first launch's files are kept)
        .medgpt.lock                                 held (fcntl) by the process running the run, for its whole life
        .hydra/overrides.yaml                        (Hydra's record of the launch; .hydra/resume-N/ for a resume)
        checkpoints/checkpoint-N/ (+ checkpoint_complete.json; .tmp-checkpoint-N/ while written)
        final/                                       a model folder: config.json or adapter_config.json +
                                                     adapter_model.safetensors, tokenizer, generation_config.json,
                                                     medgpt.json (run info)
        tensorboard/  wandb/                         (logger=tensorboard | wandb)
        predictions/<task>.jsonl  lm_eval/results.json  (stage=eval, eval_after_train)

    python -c "from medgpt.runs import run_folder; print(run_folder('outputs/runs/sft-tiny-cpu', None))"
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple, Union

from medgpt.errors import UserError

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

# ---- names: below <output_root> ----
RUNS = "runs"  # runs/<stage>-<model>-<hardware>/<stamp>/
MULTIRUN = "multirun"  # multirun/<date>/<time>/<job>/ (hydra.sweep.dir)
PIPELINES = "pipelines"  # pipelines/<stamp>/<n>-<stage>/
# ---- names: in a run folder ----
CONFIG = "config.yaml"  # the resolved run config
ENVIRONMENT = "environment.json"  # package versions and git state
METRICS = "metrics.json"  # status, losses, timings: written at the end, or on failure
HISTORY = "history.json"  # the trainer's log history
DEEPSPEED = "deepspeed.json"  # the DeepSpeed dict the trainer got
HARDWARE_PLAN = "hardware_plan.json"  # hardware=auto: the machine, the chosen setting, every candidate with its memory
TRAIN_LOG = "train.log"  # Hydra's job log (hydra.job.name=train in conf/train.yaml)
HYDRA = ".hydra"  # Hydra's record of the launch
RESUME_PREFIX = "resume-"  # launch N+1 of a run: config.resume-N.yaml, environment.resume-N.json, .hydra/resume-N/
LOCK = ".medgpt.lock"  # fcntl-locked by the process that runs in the folder; says which process that is
OVERRIDES = "overrides.yaml"  # in .hydra/: the overrides that made this run (a sweep's job)
SUBMITIT = ".submitit"  # hydra/launcher=slurm's job files
CHECKPOINTS = "checkpoints"
FINAL = "final"  # the trained model (full weights or an adapter) + tokenizer + RUN_INFO
TENSORBOARD = "tensorboard"  # logger=tensorboard's event files
WANDB = "wandb"  # logger=wandb: W&B's own folder (wandb.init(dir=<run folder>))
PREDICTIONS = "predictions"  # stage=eval / eval_after_train: <task>.jsonl per scored file
LM_EVAL = "lm_eval"  # eval.lm_eval_tasks: LM_EVAL_RESULTS
LM_EVAL_RESULTS = "results.json"
SUITE_TABLE = "suite.md"  # eval=<suite>: one table, per benchmark + macro average
SUITE_RESULTS = "suite.json"  # eval=<suite>: scores with prompt versions, few-shot ids, seed, decoding
# ---- names: in a sweep folder and a pipeline folder ----
MULTIRUN_CONFIG = "multirun.yaml"  # the basic sweeper's record of the sweep
LEADERBOARD = "leaderboard"  # medgpt sweep's tables and plots
PIPELINE_SUMMARY = "summary.json"  # every stage's metrics
# ---- names: in final/ (a model folder: the libraries' names + RUN_INFO) ----
RUN_INFO = "medgpt.json"  # template, base model, adapter or not, trust_remote_code, quantization
EXTENDED_VOCAB = "extended_vocab"  # RUN_INFO key of a model saved by medgpt.modeling.vocab
MODEL_CONFIG = "config.json"  # a full model's transformers config
GENERATION_CONFIG = "generation_config.json"
ADAPTER_FILE = "adapter_config.json"  # a LoRA adapter's peft config
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINING_ARGS = "training_args.bin"  # the trainer's pickle of its args: not kept in final/ (CONFIG records them)
# ---- names: in a checkpoint ----
MARKER = "checkpoint_complete.json"  # the size of every file, written last
TMP_PREFIX = ".tmp-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
PICKLE_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", ADAPTER_WEIGHTS)
NOT_RUNS = frozenset({FINAL, CHECKPOINTS, WANDB, TENSORBOARD, HYDRA, SUBMITIT, LEADERBOARD})  # never a run folder


# ---- ranks and run stamps (runs before any training code: Hydra resolves hydra.run.dir with them) ----

def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_stamp() -> str:
    """The run folder's time stamp. Every rank of one launch gets the same one: MEDGPT_RUN_ID when set; on several
    nodes the rendezvous id (torchrun --rdzv_id) or the SLURM job id; on one node the start time and PID of the
    launcher process that all local ranks share (torchrun, accelerate launch, deepspeed)."""
    if os.environ.get("MEDGPT_RUN_ID"):
        return os.environ["MEDGPT_RUN_ID"]
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if world_size() > local_world:  # several nodes: no local fact is shared, the launcher's id is
        shared = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if shared != "none":
            return f"job-{shared}"
        if os.environ.get("SLURM_JOB_ID"):
            return f"slurm-{os.environ['SLURM_JOB_ID']}"
        raise UserError("a multi-node run needs one run id on every node: launch torchrun with --rdzv_id=<id> "
                        "or set MEDGPT_RUN_ID=<id> on every node (see scripts/multinode_torchrun.sh)")
    if "LOCAL_RANK" in os.environ:
        started = process_start(os.getppid())
        if started:
            return datetime.fromtimestamp(started).strftime("%Y-%m-%d_%H-%M-%S") + f"_p{os.getppid()}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")[:-3]


def sweep_stamp() -> str:
    """The multirun folder below <output_root>/multirun: <date>/<time>. Like run_stamp, every rank of one
    torchrun launch (or every process given the same MEDGPT_RUN_ID) gets the same folder."""
    if os.environ.get("MEDGPT_RUN_ID"):
        return os.environ["MEDGPT_RUN_ID"]
    started = process_start(os.getppid()) if "LOCAL_RANK" in os.environ else None
    return datetime.fromtimestamp(started or time.time()).strftime("%Y-%m-%d/%H-%M-%S")


def process_start(pid: int) -> Optional[float]:
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None


# ---- which folder a launch writes to ----

def run_group(output_root: PathLike, stage: str, model: str, hardware: str) -> Path:
    """<output_root>/runs/<stage>-<model>-<hardware>: where the runs of one combination go (conf/train.yaml's
    hydra.run.dir spells the same folder for Hydra)."""
    return Path(output_root) / RUNS / f"{stage}-{model}-{hardware}"


def pipeline_folder(output_root: PathLike) -> Path:
    return Path(output_root) / PIPELINES / run_stamp()


def pipeline_step(pipeline: Path, number: int, stage: str) -> Path:
    """The run folder of a pipeline's stage: <pipeline>/<n>-<stage>."""
    return pipeline / f"{number}-{stage}"


def sweep_name(sweep_dir: Path) -> str:
    """<output_root>/multirun/<date>/<time> -> "<date>/<time>" (a sweep folder elsewhere: its own name)."""
    parts = sweep_dir.parts
    below = parts[len(parts) - parts[::-1].index(MULTIRUN):] if MULTIRUN in parts else ()
    return "/".join(below) or sweep_dir.name


def run_folder(group: str, resume: Optional[str]) -> str:
    """The run folder for this launch. Fresh: <group>/<stamp>. resume=auto: the newest folder of the group that did
    not complete and holds a complete checkpoint (a fresh one if there is none). resume=<run folder or checkpoint>:
    that run's folder, so the resumed run keeps writing where it started."""
    if not resume:
        return str(Path(group) / run_stamp())
    if resume == "auto":
        if os.environ.get("MEDGPT_RUN_ID"):  # multi-node launches name their run: resume exactly that one
            return str(Path(group) / os.environ["MEDGPT_RUN_ID"])
        found = newest_unfinished_run(Path(group))
        return str(found) if found else str(Path(group) / run_stamp())
    return str(_run_of(Path(resume).expanduser()))


def _run_of(path: Path) -> Path:
    if CHECKPOINT_RE.match(path.name) and path.parent.name == CHECKPOINTS:
        return path.parent.parent
    return path


def newest_unfinished_run(group: Path) -> Optional[Path]:
    if not group.is_dir():
        return None
    for run in sorted((p for p in group.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        if _status(run) != "completed" and newest_complete(run / CHECKPOINTS, quiet=True):
            return run
    return None


def _status(run: Path) -> Optional[str]:
    try:
        return json.loads((run / METRICS).read_text()).get("status")
    except (OSError, ValueError):
        return None


# ---- claiming a run folder: a launch never overwrites another run ----

_held: dict = {}  # resolved run folder -> the open, locked LOCK file of this process


def launch_number(run_dir: PathLike) -> int:
    """0 for the first launch in a run folder (no CONFIG yet), N for the N-th resume (config.resume-N.yaml)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        return 0
    stem, suffix = CONFIG.rsplit(".", 1)
    taken = [int(m.group(1)) for p in run_dir.glob(f"{stem}.{RESUME_PREFIX}*.{suffix}")
             if (m := re.match(rf"^{re.escape(stem)}\.{RESUME_PREFIX}(\d+)\.{suffix}$", p.name))]
    return max(taken, default=0) + 1


def launch_file(run_dir: PathLike, name: str, launch: int) -> Path:
    """CONFIG / ENVIRONMENT of launch `launch` (0: the first; N: config.resume-N.yaml)."""
    if not launch:
        return Path(run_dir) / name
    stem, suffix = name.rsplit(".", 1)
    return Path(run_dir) / f"{stem}.{RESUME_PREFIX}{launch}.{suffix}"


def hydra_subdir(run_dir: PathLike) -> str:
    """Where Hydra records this launch: HYDRA for the first, HYDRA/resume-N for a resume (the first is kept)."""
    launch = launch_number(run_dir)
    return f"{HYDRA}/{RESUME_PREFIX}{launch}" if launch else HYDRA


def check_launch(run_dir: PathLike, resume: Optional[str]) -> None:
    """Before anything is written: resume=<folder> must name an existing run (a mistyped one leaves nothing behind);
    a fresh launch (no resume) never writes into a folder that holds anything."""
    run_dir = Path(run_dir)
    if resume and resume != "auto":
        given = Path(resume).expanduser()
        if not given.is_dir():
            raise UserError(f"resume={resume}: no such folder. Give a run folder, one of its "
                            f"{CHECKPOINTS}/checkpoint-N folders, or resume=auto")
        if not any((run_dir / name).exists() for name in (CONFIG, CHECKPOINTS, METRICS)):
            raise UserError(f"resume={resume}: {run_dir} is not a run folder (no {CONFIG}, {CHECKPOINTS}/ or "
                            f"{METRICS}); give the folder of a run started by train.py")
    elif not resume and run_dir.is_dir():
        held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
        if held:
            raise UserError(f"{run_dir} already holds a run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''});"
                            f" a fresh run never writes into a used folder: continue it with resume={run_dir}, or "
                            f"give another MEDGPT_RUN_ID")


def lock_run_folder(run_dir: PathLike) -> None:
    """Hold LOCK (fcntl) in the run folder until this process ends; a second process on the folder fails at once,
    naming the process that holds it. Only the main rank locks (every rank of one launch shares the folder).
    Idempotent within a process."""
    if not is_main_process():
        return
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{run_dir} is in use by {holder} (it holds {LOCK}): wait for that run to end, or stop it "
                        f"(kill {holder.split()[1] if holder.startswith('pid ') else '<pid>'}) before resuming")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
    handle.flush()
    _held[key] = handle


def release_run_folder(run_dir: PathLike) -> None:
    """Give the lock up before the process ends (a run inside a longer-lived process: tests, notebooks)."""
    handle = _held.pop(str(Path(run_dir).resolve()), None)
    if handle is not None:
        handle.close()


# ---- finding run folders (leaderboards read them) ----

def is_run_dir(path: Path) -> bool:
    """A run that ended (METRICS) or a sweep's job that started (Hydra's OVERRIDES)."""
    return (path / METRICS).is_file() or overrides_file(path).is_file()


def find_run_dirs(path: Path) -> List[Path]:
    """A run folder itself, or every run folder below a multirun (or any) folder, in job-number order."""
    if is_run_dir(path):
        return [path]
    if not path.is_dir():
        return []
    found: List[Path] = []
    children = sorted((p for p in path.iterdir() if p.is_dir() and p.name not in NOT_RUNS),
                      key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    for child in children:
        found += find_run_dirs(child)
    return found


def overrides_file(run_dir: Path) -> Path:
    return run_dir / HYDRA / OVERRIDES


def multirun_config(sweep_dir: PathLike) -> Path:
    return Path(sweep_dir) / MULTIRUN_CONFIG


# ---- files in a run folder ----

def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def log_history(run_dir: PathLike) -> List[dict]:
    """The trainer's log history (HISTORY), empty when the run wrote none."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("log_history", [])


def predictions_file(run_dir: PathLike, task: str) -> Path:
    return Path(run_dir) / PREDICTIONS / f"{task}.jsonl"


def lm_eval_results(run_dir: PathLike) -> Path:
    return Path(run_dir) / LM_EVAL / LM_EVAL_RESULTS


def suite_table(run_dir: PathLike) -> Path:
    return Path(run_dir) / SUITE_TABLE


def suite_results(run_dir: PathLike) -> Path:
    return Path(run_dir) / SUITE_RESULTS


def final_of(run_dir: PathLike) -> Path:
    """Where a run saves its trained model."""
    return Path(run_dir) / FINAL


# ---- final/ and other model folders ----

def final_if_run(folder: Path) -> Optional[Path]:
    """A run folder's final/ (the folder holds no model of its own but a final/), else None."""
    if folder.is_dir() and not (folder / MODEL_CONFIG).exists() and final_of(folder).is_dir():
        return final_of(folder)
    return None


def holds_model(folder: Path) -> bool:
    """Full weights (MODEL_CONFIG) or a LoRA adapter (ADAPTER_FILE)."""
    return any((folder / name).exists() for name in (MODEL_CONFIG, ADAPTER_FILE))


def is_adapter(folder: PathLike) -> bool:
    return (Path(folder) / ADAPTER_FILE).exists()


def adapter_config(folder: PathLike) -> Optional[dict]:
    """A LoRA adapter's peft config, or None if the folder holds full weights."""
    config = Path(folder) / ADAPTER_FILE
    return json.loads(config.read_text()) if config.exists() else None


def adapter_base(path: PathLike) -> Optional[str]:
    """The base model of a LoRA adapter folder, or None if the folder holds full weights."""
    config = adapter_config(path)
    return None if config is None else config["base_model_name_or_path"]


def model_architectures(folder: PathLike) -> List[str]:
    """The architectures a full model's MODEL_CONFIG names (e.g. Qwen2ForSequenceClassification), else []."""
    config = Path(folder) / MODEL_CONFIG
    return (json.loads(config.read_text()).get("architectures") or []) if config.exists() else []


def run_info(path: PathLike) -> dict:
    """What medgpt recorded about the model in a folder (RUN_INFO), {} for a model it did not save."""
    info = Path(path) / RUN_INFO
    return json.loads(info.read_text(encoding="utf-8")) if info.exists() else {}


def write_run_info(folder: PathLike, info: dict) -> None:
    write_json(Path(folder) / RUN_INFO, info)


# ---- checkpoints: which can be resumed from ----

def problem(checkpoint: Path, allow_pickle: bool = False) -> Optional[str]:
    """Why this checkpoint cannot be resumed from, or None if it is complete and intact."""
    marker = checkpoint / MARKER
    if not marker.exists():
        return "incomplete (no completion marker: the run died while writing it)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"its {MARKER} is unreadable"
    for name, size in files.items():
        path = checkpoint / name
        if not path.exists():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is corrupt ({path.stat().st_size} bytes, {size} when saved)"
    if not allow_pickle and not any(name in files for name in SAFE_WEIGHTS) \
            and any(Path(name).name in PICKLE_WEIGHTS for name in files):
        return "its weights are a pickle (.bin) file; set allow_pickle=true if you trust it"
    return None


def checkpoint_folder(checkpoints: PathLike, step: int) -> Path:
    """checkpoints/checkpoint-N: where the trainer saves step N (transformers' own naming, matched by CHECKPOINT_RE)."""
    return Path(checkpoints) / f"checkpoint-{step}"


def checkpoints_of(folder: Path) -> List[Tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def newest_complete(folder: Path, allow_pickle: bool = False, quiet: bool = False) -> Optional[Path]:
    for _step, path in reversed(checkpoints_of(folder)):
        why = problem(path, allow_pickle)
        if why is None:
            return path
        if not quiet:
            log.warning("resume: skipping %s: %s", path, why)
    return None


def check_weights(path: str, allow_pickle: bool = False, what: str = "model.path",
                  flag: str = "allow_pickle=true") -> None:
    """Refuse a local model/adapter folder whose weights exist only as pickle (.bin): unpickling can run code."""
    folder = Path(path).expanduser()
    if allow_pickle or not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    has_safe = any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)
    pickles = sorted(n for n in names if n.endswith(".bin") and n != TRAINING_ARGS)
    if pickles and not has_safe:
        raise UserError(f"{what}={path} holds pickle weights only ({', '.join(pickles)}); loading a pickle can run "
                        f"arbitrary code. Convert them to safetensors, or give {flag} if you trust the source")
