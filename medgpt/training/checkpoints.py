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
import shutil
import time
from pathlib import Path
from typing import List, Optional

from medgpt.errors import UserError
from medgpt.runs import CHECKPOINT_RE, CHECKPOINTS, MARKER, TMP_PREFIX, checkpoints_of, newest_complete, problem

log = logging.getLogger(__name__)
# ---- run folder choice (runs before any training code: Hydra resolves hydra.run.dir with it) ----

# ---- completeness ----

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
