"""The run folder: its layout and file names, where a launch writes (run stamps shared by every rank, resume=auto),
what a finished run leaves in final/, and which checkpoints in it can be trusted. Nothing else in medgpt names
these files.

    outputs/runs/<stage>-<model>-<hardware>/<stamp>/
        config.yaml  environment.json  metrics.json  history.json  deepspeed.json
        checkpoints/checkpoint-N/ (+ checkpoint_complete.json)   final/ (+ medgpt.json)

    python -c "from medgpt.runs import run_folder; print(run_folder('outputs/runs/sft-tiny-cpu', None))"
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

from medgpt.errors import UserError

log = logging.getLogger(__name__)

# ---- names ----
CONFIG = "config.yaml"  # the resolved run config
ENVIRONMENT = "environment.json"  # package versions and git state
METRICS = "metrics.json"  # status, losses, timings: written at the end, or on failure
HISTORY = "history.json"  # the trainer's log history
DEEPSPEED = "deepspeed.json"  # the DeepSpeed dict the trainer got
CHECKPOINTS = "checkpoints"
FINAL = "final"  # the trained model (full weights or an adapter) + tokenizer + RUN_INFO
RUN_INFO = "medgpt.json"  # in final/: template, base model, adapter or not, trust_remote_code, quantization
EXTENDED_VOCAB = "extended_vocab"  # RUN_INFO key of a model saved by medgpt.modeling.vocab
ADAPTER_FILE = "adapter_config.json"
MARKER = "checkpoint_complete.json"  # in a checkpoint: the size of every file, written last
TMP_PREFIX = ".tmp-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
PICKLE_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


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


# ---- files in it ----

def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def adapter_base(path: str) -> Optional[str]:
    """The base model of a LoRA adapter folder, or None if the folder holds full weights."""
    config = Path(path) / ADAPTER_FILE
    if not config.exists():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


def run_info(path: str) -> dict:
    info = Path(path) / RUN_INFO
    return json.loads(info.read_text()) if info.exists() else {}


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


def check_weights(path: str, allow_pickle: bool = False, what: str = "model.path") -> None:
    """Refuse a local model/adapter folder whose weights exist only as pickle (.bin): unpickling can run code."""
    folder = Path(path).expanduser()
    if allow_pickle or not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    has_safe = any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)
    pickles = sorted(n for n in names if n.endswith(".bin") and n != "training_args.bin")
    if pickles and not has_safe:
        raise UserError(f"{what}={path} holds pickle weights only ({', '.join(pickles)}); loading a pickle can run "
                        f"arbitrary code. Convert them to safetensors, or set allow_pickle=true if you trust the source")
