"""Atomic checkpoints and exact resume.

A checkpoint is written by the trainer into `checkpoints/.tmp-checkpoint-N/`, renamed to `checkpoints/checkpoint-N/`
once every rank has finished, then marked complete with `checkpoint_complete.json` (the size of every file in it).
Resume only trusts a marked checkpoint whose files still have those sizes; anything else is skipped, with the reason
logged. Rotation (`save_total_limit`) counts complete checkpoints only, so the last complete one is never deleted.

    python train.py <same overrides> resume=auto                  # newest unfinished run of this group, newest checkpoint
    python train.py <same overrides> resume=outputs/runs/sft-tiny-cpu/2026-11-26_06-00-00_000
    python train.py <same overrides> resume=outputs/runs/sft-tiny-cpu/<stamp>/checkpoints/checkpoint-40
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import List, Optional, Tuple

from medgpt.errors import UserError

log = logging.getLogger(__name__)
MARKER = "checkpoint_complete.json"
TMP_PREFIX = ".tmp-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
PICKLE_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


# ---- run folder choice (runs before any training code: Hydra resolves hydra.run.dir with it) ----

def run_folder(group: str, resume: Optional[str]) -> str:
    """The run folder for this launch. Fresh: <group>/<stamp>. resume=auto: the newest folder of the group that did
    not complete and holds a complete checkpoint (a fresh one if there is none). resume=<run folder or checkpoint>:
    that run's folder, so the resumed run keeps writing where it started."""
    from medgpt.tracking import run_stamp

    if not resume:
        return str(Path(group) / run_stamp())
    if resume == "auto":
        if os.environ.get("MEDGPT_RUN_ID"):  # multi-node launches name their run: resume exactly that one
            return str(Path(group) / os.environ["MEDGPT_RUN_ID"])
        found = newest_unfinished_run(Path(group))
        return str(found) if found else str(Path(group) / run_stamp())
    return str(_run_of(Path(resume).expanduser()))


def _run_of(path: Path) -> Path:
    if CHECKPOINT_RE.match(path.name) and path.parent.name == "checkpoints":
        return path.parent.parent
    return path


def newest_unfinished_run(group: Path) -> Optional[Path]:
    if not group.is_dir():
        return None
    for run in sorted((p for p in group.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
        if _status(run) != "completed" and newest_complete(run / "checkpoints", quiet=True):
            return run
    return None


def _status(run: Path) -> Optional[str]:
    try:
        return json.loads((run / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


# ---- completeness ----

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


def resume_checkpoint(resume: Optional[str], run_dir: Path, allow_pickle: bool = False) -> Optional[str]:
    """cfg.resume -> the checkpoint folder to hand to trainer.train(), or None to start from scratch.
    Raises UserError when a named checkpoint or run cannot be resumed."""
    if not resume:
        return None
    if resume == "auto":
        found = newest_complete(run_dir / "checkpoints", allow_pickle)
        if found is None:
            log.warning("resume=auto: no complete checkpoint in %s; starting from scratch", run_dir / "checkpoints")
            return None
        log.warning("resume=auto: resuming from %s", found)
        return str(found)
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise UserError(f"resume={resume}: no such folder. Give a run folder, one of its checkpoints/checkpoint-N "
                        f"folders, or resume=auto")
    if CHECKPOINT_RE.match(path.name):
        why = problem(path, allow_pickle)
        if why:
            newest = newest_complete(path.parent, allow_pickle, quiet=True)
            raise UserError(f"resume={resume}: cannot resume from this checkpoint: {why}. "
                            + (f"The newest complete one is {newest}" if newest else "No complete checkpoint is left"))
        return str(path)
    found = newest_complete(path / "checkpoints", allow_pickle)
    if found is None:
        raise UserError(f"resume={resume}: no complete checkpoint in {path / 'checkpoints'}; "
                        f"start a fresh run (drop resume=)")
    log.warning("resume: resuming from %s", found)
    return str(found)


def config_changes(saved_config: Path, resolved: dict) -> List[str]:
    """Keys whose value differs from the config the run was started with (resume aside): a resumed run should be
    launched with the same overrides."""
    if not saved_config.exists():
        return []
    from omegaconf import OmegaConf

    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    old, new = flat(OmegaConf.to_container(OmegaConf.load(saved_config))), flat(resolved)
    return sorted(k for k in old.keys() | new.keys() if k != "resume" and old.get(k) != new.get(k))


# ---- atomic save: wraps the trainer's own checkpoint writer, for every stage ----

def make_atomic(trainer) -> None:
    """Route the trainer's checkpoint writes through a temporary folder, rename, mark complete, then rotate
    by complete checkpoints only. Every rank writes into the same temporary folder (DeepSpeed shards). The
    trainer's own rotation then only sees the temporary folder, which holds one checkpoint."""
    save = trainer._save_checkpoint

    def atomic_save(model, trial, *args, **kwargs):
        root = Path(trainer._get_output_dir(trial=trial))
        name = f"checkpoint-{trainer.state.global_step}"
        tmp_root = root / f"{TMP_PREFIX}{name}"
        trainer._get_output_dir = lambda trial=None: str(tmp_root)
        try:
            save(model, trial, *args, **kwargs)
        finally:
            del trainer._get_output_dir  # back to the class method
        trainer.accelerator.wait_for_everyone()
        if trainer.args.should_save:
            final = commit(tmp_root / name, root / name)
            best = trainer.state.best_model_checkpoint
            if best and str(tmp_root) in best:
                trainer.state.best_model_checkpoint = best.replace(str(tmp_root), str(root))
            rotate(root, trainer.args.save_total_limit, keep=trainer.state.best_model_checkpoint)
            log.info("checkpoint %s complete", final)
        trainer.accelerator.wait_for_everyone()

    trainer._save_checkpoint = atomic_save


def commit(written: Path, final: Path) -> Path:
    """Rename the written folder into place, flush its files, then write the completion marker (atomically)."""
    if final.exists():  # left by a run that died before marking it, or a rerun from an earlier step
        shutil.rmtree(final)
    written.rename(final)
    shutil.rmtree(written.parent, ignore_errors=True)
    state = final / "trainer_state.json"  # best_model_checkpoint may name the temporary folder
    if state.exists() and str(written.parent) in state.read_text():
        state.write_text(state.read_text().replace(str(written.parent), str(final.parent)))
    files = {}
    for path in sorted(p for p in final.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[str(path.relative_to(final))] = path.stat().st_size
    tmp = final / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": int(final.name.split("-")[-1]), "time": time.time(), "files": files}, indent=1))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(final / MARKER)
    return final


def rotate(root: Path, limit: Optional[int], keep: Optional[str] = None) -> List[Path]:
    """Delete leftovers (temp folders, unmarked checkpoints) and complete checkpoints beyond the newest `limit`
    (never the best one). Returns what was deleted."""
    deleted = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(TMP_PREFIX)]
    complete = []
    for _step, path in checkpoints_of(root):
        (complete if (path / MARKER).exists() else deleted).append(path)
    if limit:
        keep_path = Path(keep).resolve() if keep else None
        deleted += [p for p in complete[:-limit] if p.resolve() != keep_path]
    for path in deleted:
        log.info("deleting checkpoint %s (save_total_limit=%s)", path, limit)
        shutil.rmtree(path, ignore_errors=True)
    return deleted


# ---- safety: safetensors only ----

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


def check_global_batch(args) -> None:
    """A config whose global batch is zero would train on nothing (the trainer accepts it silently)."""
    per_device = args.per_device_train_batch_size
    accumulation = args.gradient_accumulation_steps
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    if per_device < 1 or accumulation < 1:
        raise UserError(f"the global batch is {max(per_device, 0) * max(accumulation, 0) * world} "
                        f"(stage.args.per_device_train_batch_size={per_device} x "
                        f"stage.args.gradient_accumulation_steps={accumulation} x {world} process(es)); "
                        f"set both to at least 1")
