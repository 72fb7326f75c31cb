"""Exact resume for every training stage (issue 19.3): a run of 4 steps checkpointed at step 2, the same run "killed"
after that checkpoint (its folder as the crash leaves it: checkpoint-2 complete, nothing after), resumed with
`resume=auto`; the losses of steps 3 and 4 equal the uninterrupted run's within 1e-4 (for RLOO and GRPO the
completions are sampled: the restored RNG state gives the same samples, so the same losses and rewards).

The SIGKILL itself (in the middle of writing a checkpoint, through `train.py`) is tested for SFT and DPO in
tests/test_reliability.py; here the resume path of each stage is, in this process.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m pytest -q tests/test_resume_stages.py
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import train_in_process

STEPS = ("stage.args.max_steps=4", "stage.args.save_steps=2", "stage.args.logging_steps=1",
         "stage.args.learning_rate=1e-3", "stage.args.save_total_limit=null")
STAGES = {
    "pt": ("stage=pt",),
    "sft-full": (),
    "sft-lora": ("hardware=lora",),
    "sft-qlora4": ("hardware=qlora4",),
    "pt-streaming": ("stage=pt", "data.streaming=true", "data.eval_split=0"),
    "sft-streaming": ("data.streaming=true", "data.eval_split=0"),
    "rm": ("stage=rm",),
    "dpo": ("stage=dpo",),
    "ipo": ("stage=ipo",),
    "simpo": ("stage=simpo",),
    "orpo": ("stage=orpo",),
    "kto": ("stage=kto",),
    "rloo": ("stage=ppo",),
    "grpo": ("stage=grpo",),
}
COMPARED = ("loss", "reward", "rewards/chosen", "rewards/margins", "logps/chosen")  # whichever the stage logs


def logged(run_dir: Path) -> dict:
    history = json.loads((run_dir / "history.json").read_text())["log_history"]
    return {h["step"]: h for h in history if "loss" in h}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_resumes_exactly(stage, tmp_path):
    overrides = (*STAGES[stage], *STEPS)
    uninterrupted, _ = train_in_process(tmp_path / "a", *overrides)
    crashed = Path(shutil.copytree(uninterrupted, tmp_path / "b" / "run"))
    for leftover in ("final", "metrics.json", "history.json", "checkpoints/checkpoint-4"):
        shutil.rmtree(crashed / leftover) if (crashed / leftover).is_dir() else (crashed / leftover).unlink()
    resumed, metrics = train_in_process(tmp_path / "b", *overrides, "resume=auto")
    assert resumed == crashed and metrics["global_step"] == 4
    expected, got = logged(uninterrupted), logged(resumed)
    assert sorted(got) == [1, 2, 3, 4], sorted(got)  # steps 1-2 come from checkpoint-2's trainer state
    keys = [k for k in COMPARED if k in expected[3]]
    diff = max(abs(got[s][k] - expected[s][k]) for s in (3, 4) for k in keys)
    print(f"{stage}: max |difference| after resume over {keys} = {diff:.3g}")
    assert diff <= 1e-4, {s: {k: (expected[s][k], got[s][k]) for k in keys} for s in (3, 4)}
