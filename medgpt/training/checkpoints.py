"""Atomic checkpoints and exact resume.

The trainer writes `checkpoints/checkpoint-N/`; once every rank has finished, a trainer callback (on_save) flushes its
files and marks it complete with `checkpoint_complete.json` (the size of every file in it), written last. Resume only
trusts a marked checkpoint whose files still have those sizes; anything else is skipped, with the reason logged.
Rotation (`save_total_limit`) is medgpt's, after the marker: it counts complete checkpoints only, so the last complete
one is never deleted (and the best one is kept).

    python train.py <same overrides> resume=auto                  # newest unfinished run of this group, newest checkpoint
    python train.py <same overrides> resume=outputs/runs/sft-tiny-cpu/2026-11-26_06-00-00_000
    python train.py <same overrides> resume=outputs/runs/sft-tiny-cpu/<stamp>/checkpoints/checkpoint-40
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import List, Optional

from transformers import TrainerCallback

from medgpt.errors import UserError
from medgpt.runs import (CHECKPOINT_RE, CHECKPOINTS, MARKER, TMP_PREFIX, checkpoint_folder, checkpoints_of,
                         newest_complete, problem, world_size)

log = logging.getLogger(__name__)


# ---- resume ----

def resume_checkpoint(resume: Optional[str], run_dir: Path, allow_pickle: bool = False) -> Optional[str]:
    """cfg.resume -> the checkpoint folder to hand to trainer.train(), or None to start from scratch.
    Raises UserError when a named checkpoint or run cannot be resumed."""
    if not resume:
        return None
    if resume == "auto":
        found = newest_complete(run_dir / CHECKPOINTS, allow_pickle)
        if found is None:
            log.warning("resume=auto: no complete checkpoint in %s; starting from scratch", run_dir / CHECKPOINTS)
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
    found = newest_complete(path / CHECKPOINTS, allow_pickle)
    if found is None:
        raise UserError(f"resume={resume}: no complete checkpoint in {path / CHECKPOINTS}; "
                        f"start a fresh run (drop resume=)")
    log.warning("resume: resuming from %s", found)
    return str(found)


# ---- atomic save: a trainer callback, for every stage ----

def atomic_saves(args) -> "AtomicCheckpoints":
    """The callback that marks each checkpoint complete and rotates by complete checkpoints. It takes
    save_total_limit over from the trainer (set to None in `args`): the trainer's own rotation runs before a new
    checkpoint is marked, so with save_total_limit=1 it would delete the last complete checkpoint first."""
    limit, args.save_total_limit = args.save_total_limit, None
    return AtomicCheckpoints(limit)


class AtomicCheckpoints(TrainerCallback):
    """The trainer writes `checkpoint-N/` as usual; once every rank has finished (on_save), its files are flushed
    and `checkpoint_complete.json` is written last, atomically. A checkpoint without that marker is incomplete by
    definition, and resume skips it. A folder `checkpoint-N/` left by an earlier attempt is removed before the
    trainer writes step N again, so a marker never describes files of two attempts."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit

    def on_step_end(self, args, state, control, **kwargs):
        self._clear_leftover(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._clear_leftover(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every rank's files (DeepSpeed shards) are written
        if args.should_save:
            final = mark_complete(checkpoint_folder(args.output_dir, state.global_step))
            rotate(final.parent, self.limit, keep=state.best_model_checkpoint)
            log.info("checkpoint %s complete", final)
        PartialState().wait_for_everyone()

    def _clear_leftover(self, args, state, control) -> None:
        # save_strategy=best decides after evaluating whether it saves: clear on every evaluation step then
        if not (control.should_save or args.save_strategy == "best" and control.should_evaluate):
            return
        from accelerate import PartialState

        folder = checkpoint_folder(args.output_dir, state.global_step)
        if args.should_save and folder.exists():
            log.warning("removing %s, left by an earlier attempt, before saving step %d again", folder,
                        state.global_step)
            shutil.rmtree(folder)
        PartialState().wait_for_everyone()  # no rank writes into the folder before it is gone


def mark_complete(folder: Path) -> Path:
    """Flush every file of a written checkpoint, then write the completion marker (atomically, last)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[str(path.relative_to(folder))] = path.stat().st_size
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": int(CHECKPOINT_RE.match(folder.name).group(1)), "time": time.time(), "files": files},
                              indent=1))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(folder / MARKER)
    return folder


def rotate(root: Path, limit: Optional[int], keep: Optional[str] = None) -> List[Path]:
    """Delete leftovers (unmarked checkpoints; `.tmp-*` folders of older medgpt versions) and complete checkpoints
    beyond the newest `limit` (never the best one). Returns what was deleted."""
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


# ---- a batch that trains on something ----

def check_global_batch(args) -> None:
    """A config whose global batch is zero would train on nothing (the trainer accepts it silently)."""
    per_device = args.per_device_train_batch_size
    accumulation = args.gradient_accumulation_steps
    world = max(1, world_size())
    if per_device < 1 or accumulation < 1:
        raise UserError(f"the global batch is {max(per_device, 0) * max(accumulation, 0) * world} "
                        f"(stage.args.per_device_train_batch_size={per_device} x "
                        f"stage.args.gradient_accumulation_steps={accumulation} x {world} process(es)); "
                        f"set both to at least 1")
