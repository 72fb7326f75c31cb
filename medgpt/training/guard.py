"""Numerical guard: a non-finite loss or gradient stops the run before the optimizer step, naming the step and the
last good checkpoint; with guard.skip_nonfinite=true that step's update is skipped instead (counted in metrics.json
as nonfinite_skipped_steps, stopping once more than guard.max_skipped steps were skipped).

Two public extension points, for every stage's trainer:
- `NonFiniteGuard`, a trainer callback: on_pre_optimizer_step (after gradient clipping, before the update) it checks
  the gradients and decides. Clipping multiplies every gradient by max_norm / norm, so a NaN or inf gradient leaves
  NaN behind (only a norm that overflows from finite gradients goes unseen: clipping zeroes those gradients).
- `guarded(trainer_class)`, a subclass whose public training_step hands every micro-batch's raw loss to the callback
  (HF's logging_nan_inf_filter, which replaces a NaN loss in the logs by an average, cannot hide it), and under
  DeepSpeed, whose partitioned gradients the callback cannot see, the engine's gradient norm.
The flags stay on the device until the one read per optimizer step. Under several processes the ranks agree
first: the flags are all-reduced (max), so every rank skips or stops at the same step.

    python train.py guard.skip_nonfinite=true guard.max_skipped=5
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from transformers import TrainerCallback

from medgpt.errors import UserError
from medgpt.runs import newest_complete

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """Training diverged: a clear message (step, last good checkpoint, what to try), no traceback."""


class NonFiniteGuard(TrainerCallback):
    def __init__(self, enabled: bool, skip: bool, max_skipped: int, checkpoints: Path):
        self.enabled, self.skip, self.max_skipped, self.checkpoints = enabled, skip, max_skipped, Path(checkpoints)
        self.deepspeed = False
        self.bad_losses: List[Any] = []  # one 0-dim bool tensor per micro-batch of this step
        self.deepspeed_norm: Optional[float] = None
        self.skipped_steps: List[int] = []

    @classmethod
    def from_config(cls, guard_cfg, checkpoints: Path) -> "NonFiniteGuard":
        return cls(bool(guard_cfg.enabled), bool(guard_cfg.skip_nonfinite), int(guard_cfg.max_skipped), checkpoints)

    # ---- fed by the guarded trainer's training_step ----

    def watch_loss(self, loss) -> None:
        import torch

        if self.enabled:
            self.bad_losses.append(~torch.isfinite(loss.detach()).all())

    def watch_deepspeed_norm(self, norm: Optional[float]) -> None:
        self.deepspeed_norm = norm

    # ---- callback ----

    def on_train_begin(self, args, state, control, **kwargs):
        self.deepspeed = bool(args.deepspeed)  # gradients are partitioned: the engine's norm, and no skipping

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self.enabled:
            return
        loss_bad, norm_bad, norm = self._read(model)
        if not (loss_bad or norm_bad):
            return
        step = state.global_step + 1
        what = "the loss" if loss_bad else f"the gradient norm ({norm})"
        can_skip = self.skip and not self.deepspeed
        if can_skip and len(self.skipped_steps) < self.max_skipped:
            optimizer.zero_grad(set_to_none=True)  # no gradient -> the optimizer leaves every weight as it is
            self.skipped_steps.append(step)
            log.warning("guard: step %d: %s is not finite; update skipped (%d so far)", step, what,
                        len(self.skipped_steps))
            return
        last = newest_complete(self.checkpoints, quiet=True)
        why = ("more than guard.max_skipped=%d steps were skipped" % self.max_skipped if can_skip
               else "skipping is not available under DeepSpeed" if self.skip else "")
        raise NonFiniteError(
            f"step {step}: {what} is not finite (NaN or inf){'; ' + why if why else ''}. Last good checkpoint: "
            f"{last or 'none (no checkpoint saved yet)'}. Lower stage.args.learning_rate or check the data; to skip "
            f"such steps {'resume with resume=auto' if last else 'run again with'} guard.skip_nonfinite=true")

    def _read(self, model):
        """(a micro-batch loss is non-finite, the gradient norm is non-finite, the norm or None), agreed by every
        rank: the flags are all-reduced (max) before the one device read of the step, so that all ranks skip or
        stop together (a rank deciding alone would step while another skips, or wait forever for one that
        stopped)."""
        import torch

        flags, self.bad_losses = self.bad_losses, []
        norm = None
        if self.deepspeed:
            norm, self.deepspeed_norm = self.deepspeed_norm, None  # the engine's, already on the host
            norm = None if norm is None else float(norm)
            grads = []
        else:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
        device = _collective_device(grads[0].device if grads else None)
        loss_bad = torch.stack(flags).any().to(device) if flags else torch.zeros((), dtype=torch.bool, device=device)
        if grads:
            total = torch.nn.utils.get_total_norm(grads)  # of the clipped gradients (the trainer keeps its own)
            total = total.full_tensor() if hasattr(total, "full_tensor") else total  # sharded (DTensor) gradients
            total = total.float().to(device)
            norm_bad = ~torch.isfinite(total)
        else:
            total = torch.tensor(float("nan") if norm is None else norm, device=device)
            norm_bad = torch.tensor(norm is not None and not math.isfinite(norm), device=device)
        agreed = torch.stack([loss_bad.float(), norm_bad.float()])
        _all_reduce_max(agreed)
        loss_any, norm_any, total = torch.cat([agreed, total.reshape(1)]).tolist()
        return bool(loss_any), bool(norm_any), (total if grads else norm)

    def report(self) -> Dict[str, Any]:
        return {"nonfinite_skipped_steps": len(self.skipped_steps), "nonfinite_steps": list(self.skipped_steps)}


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device(device):
    """Where the decision tensor lives: the gradients' device, or the one the process group's backend needs."""
    import torch

    if device is not None and device.type != "meta":
        return device
    if _distributed():
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_max(tensor) -> None:
    """Every rank's flags -> the max over the ranks (no-op in one process)."""
    if _distributed():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


class GuardedTrainingStep:
    """Mixin for a transformers.Trainer subclass: every micro-batch's loss (and, under DeepSpeed, the engine's
    gradient norm after the step's last micro-batch) goes to the trainer's NonFiniteGuard callback, if it has one."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        guard = next((c for c in self.callback_handler.callbacks if isinstance(c, NonFiniteGuard)), None)
        if guard is not None:
            guard.watch_loss(loss)
            if self.is_deepspeed_enabled and self.accelerator.sync_gradients and \
                    hasattr(model, "get_global_grad_norm"):  # the DeepSpeed engine has just stepped
                guard.watch_deepspeed_norm(model.get_global_grad_norm())
        return loss


def guarded(trainer_class: type) -> type:
    """`trainer_class` with GuardedTrainingStep mixed in (each stage's trainer class differs): build the stage's
    trainer from this class so that the guard sees its raw losses."""
    if issubclass(trainer_class, GuardedTrainingStep):
        return trainer_class
    return type(f"Guarded{trainer_class.__name__}", (GuardedTrainingStep, trainer_class),
                {"__doc__": f"{trainer_class.__name__} whose micro-batch losses are checked by medgpt's guard "
                            f"(medgpt.training.guard)."})
