"""Numerical guard: a non-finite loss or gradient norm stops the run before the optimizer step, naming the step and
the last good checkpoint; with guard.skip_nonfinite=true that step's update is skipped instead (counted in
metrics.json as nonfinite_skipped_steps, stopping once more than guard.max_skipped steps were skipped).

It reads the raw loss of every micro-batch and the gradient norm the trainer computes anyway, so HF's
logging_nan_inf_filter (which replaces a NaN loss in the logs by an average) cannot hide it.

    python train.py guard.skip_nonfinite=true guard.max_skipped=5
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List

from transformers import TrainerCallback

from medgpt.errors import UserError
from medgpt.runs import newest_complete

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """Training diverged: a clear message (step, last good checkpoint, what to try), no traceback."""


class NonFiniteGuard(TrainerCallback):
    def __init__(self, skip: bool, max_skipped: int, checkpoints: Path, deepspeed: bool):
        self.skip, self.max_skipped, self.checkpoints, self.deepspeed = skip, max_skipped, checkpoints, deepspeed
        self.bad_loss: List[Any] = []  # non-finite checks of this step's micro-batch losses (tensors: one sync/step)
        self.grad_norm = None
        self.skipped_steps: List[int] = []

    def watch_loss(self, loss) -> None:
        import torch

        self.bad_loss.append(~torch.isfinite(loss.detach()).all())

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        step = state.global_step + 1
        loss_bad = any(bool(b) for b in self.bad_loss)
        norm = float(self.grad_norm) if self.grad_norm is not None else None
        norm_bad = norm is not None and not math.isfinite(norm)
        self.bad_loss, self.grad_norm = [], None
        if not (loss_bad or norm_bad):
            return
        what = "the loss" if loss_bad else f"the gradient norm ({norm})"
        if self.skip and not self.deepspeed and len(self.skipped_steps) < self.max_skipped:
            optimizer.zero_grad(set_to_none=True)  # no gradient -> the optimizer leaves every weight as it is
            self.skipped_steps.append(step)
            log.warning("guard: step %d: %s is not finite; update skipped (%d so far)", step, what,
                        len(self.skipped_steps))
            return
        last = newest_complete(self.checkpoints, quiet=True)
        why = ("more than guard.max_skipped=%d steps were skipped" % self.max_skipped if self.skip and not
               self.deepspeed else "skipping is not available under DeepSpeed" if self.skip else "")
        raise NonFiniteError(
            f"step {step}: {what} is not finite (NaN or inf){'; ' + why if why else ''}. Last good checkpoint: "
            f"{last or 'none (no checkpoint saved yet)'}. Lower stage.args.learning_rate or check the data; to skip "
            f"such steps {'resume with resume=auto' if last else 'run again with'} guard.skip_nonfinite=true")

    def report(self) -> Dict[str, Any]:
        return {"nonfinite_skipped_steps": len(self.skipped_steps), "nonfinite_steps": list(self.skipped_steps)}


def install(trainer, guard_cfg, checkpoints: Path) -> NonFiniteGuard:
    """Watch every micro-batch loss (wrapping trainer.training_step) and the gradient norm the trainer computes
    (wrapping trainer._get_grad_norm): works for every stage's trainer."""
    guard = NonFiniteGuard(bool(guard_cfg.skip_nonfinite), int(guard_cfg.max_skipped), Path(checkpoints),
                           deepspeed=bool(getattr(trainer, "is_deepspeed_enabled", False)))
    if not guard_cfg.enabled:
        return guard
    training_step, get_grad_norm = trainer.training_step, trainer._get_grad_norm

    def watched_training_step(*args, **kwargs):
        loss = training_step(*args, **kwargs)
        guard.watch_loss(loss)
        return loss

    def watched_grad_norm(*args, **kwargs):
        guard.grad_norm = get_grad_norm(*args, **kwargs)
        return guard.grad_norm

    trainer.training_step, trainer._get_grad_norm = watched_training_step, watched_grad_norm
    trainer.add_callback(guard)
    return guard
