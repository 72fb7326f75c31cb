"""The non-finite guard across ranks (issue 19 item 7): two CPU processes (gloo) where only rank 0 sees a NaN loss
must take the same decision, both skipping the update (guard.skip_nonfinite=true) or both stopping, never one
stepping while the other skips. Runs the guard callback itself in two spawned processes (no
trainer).

    python -m pytest -q tests/test_guard_distributed.py
"""
from __future__ import annotations

import os

import pytest

from medgpt.training.guard import NonFiniteError, NonFiniteGuard


def _rank(rank: int, port: int, results):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for skip in (True, False):
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 2)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            model(torch.ones(1, 4)).sum().backward()  # finite gradients on both ranks (as after DDP's all-reduce)
            guard = NonFiniteGuard(enabled=True, skip=skip, max_skipped=5, checkpoints="/nonexistent")
            guard.watch_loss(torch.tensor(float("nan") if rank == 0 else 1.0))  # only rank 0's micro-batch diverged
            state = type("State", (), {"global_step": 6})()
            outcome = "stepped"
            try:
                guard.on_pre_optimizer_step(None, state, None, model=model, optimizer=optimizer)
                if all(p.grad is None for p in model.parameters()):
                    outcome = "skipped"
            except NonFiniteError as e:
                outcome = f"stopped: {e}"
            results[(rank, skip)] = (outcome, guard.report())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_a_nonfinite_loss_seen_by_one_rank():
    """One spawn, two cases: guard.skip_nonfinite=true (both ranks skip) and false (both stop)."""
    from conftest import two_ranks

    results = two_ranks(_rank)
    skipped = [results[(r, True)] for r in (0, 1)]
    assert [o for o, _ in skipped] == ["skipped", "skipped"], skipped  # rank 1's loss was finite: it skips too
    assert skipped[0][1] == skipped[1][1] == {"nonfinite_skipped_steps": 1, "nonfinite_steps": [7]}
    stopped = [results[(r, False)][0] for r in (0, 1)]
    assert all(o.startswith("stopped: step 7: the loss is not finite") for o in stopped), stopped
