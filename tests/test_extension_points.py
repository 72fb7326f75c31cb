"""Trainer behaviour goes through public extension points (callbacks, a subclass overriding public methods); the few
private library APIs medgpt cannot avoid live in medgpt/compat.py, checked before use (issue 16).

    python -m pytest -q tests/test_extension_points.py
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, train_in_process

# a trainer's private attributes, attributes assigned on a trainer instance, and the private APIs medgpt used to patch
PRIVATE_USE = re.compile(r"trainer\._|trainer\.\w+\s*=[^=]|\._save_checkpoint|_get_grad_norm|_remove_unused_columns"
                         r"|\._name_or_path|_make_submission_file_text")


def test_no_private_library_api_outside_compat():
    found = []
    for path in sorted((ROOT / "medgpt").rglob("*.py")):
        if path.name == "compat.py" and path.parent.name == "medgpt":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE_USE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_compat_check_passes_with_the_installed_libraries():
    from medgpt import compat

    for library in compat.PRIVATE:
        compat.check(library)


def test_a_missing_private_api_fails_in_one_line_naming_the_version(monkeypatch):
    import submitit

    from medgpt import compat
    from medgpt.errors import UserError

    monkeypatch.delattr(submitit.SlurmExecutor, "_make_submission_file_text")
    with pytest.raises(UserError) as error:
        compat.check("submitit")
    message = str(error.value)
    assert "\n" not in message and "SlurmExecutor._make_submission_file_text" in message
    assert f"submitit {submitit.__version__} " in message and "pip install 'submitit==" in message
    from medgpt.training.cluster import main

    assert main(["hydra/launcher=slurm"]) == 2  # `medgpt cluster` stops there, before composing anything


def test_sbatch_preview_checks_the_executor_it_is_given():
    from medgpt import compat
    from medgpt.errors import UserError

    with pytest.raises(UserError, match="submitit .* has no AutoExecutor._executor"):
        compat.sbatch_text(object())


def test_medgpt_rotates_checkpoints_instead_of_the_trainer():
    from transformers import TrainingArguments

    from medgpt.training.checkpoints import atomic_saves

    args = TrainingArguments(output_dir="unused", save_total_limit=2, report_to="none", use_cpu=True)
    callback = atomic_saves(args)
    # the trainer's rotation runs before a new checkpoint is marked: it must never delete the last complete one
    assert args.save_total_limit is None and callback.limit == 2


def test_every_training_stage_builds_a_guarded_trainer():
    """Each stage builds its trainer from guard.guarded(...), directly or through a trainer factory that applies
    it: the guard sees every stage's raw losses."""
    from trl import DPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    from medgpt.stages.dpo import labelled_head_trainer
    from medgpt.stages.orpo import pair_head_trainer
    from medgpt.training.guard import GuardedTrainingStep, guarded

    factories = {"labelled_head_trainer(": labelled_head_trainer(DPOTrainer, metrics=()),
                 "pair_head_trainer(": pair_head_trainer(ORPOTrainer, nll="", average=lambda trainer: False,
                                                         padding="padding_value", shifted_logits=True)}
    assert all(issubclass(made, GuardedTrainingStep) for made in factories.values())
    for path in sorted((ROOT / "medgpt" / "stages").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "def build_trainer" in source:
            assert any(call in source for call in ("guarded(", *factories)), \
                f"{path.name} builds its trainer without guard.guarded"

    assert issubclass(guarded(DPOTrainer), GuardedTrainingStep) and guarded(guarded(DPOTrainer)).__mro__[1:3] == \
        (GuardedTrainingStep, DPOTrainer)


def _poison(monkeypatch, stage: str, step: int):
    """NaN out of the input embeddings at one training step of `stage`."""
    module = importlib.import_module(f"medgpt.stages.{stage}")
    build = module.build_trainer

    def poisoned(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.model.get_input_embeddings().register_forward_hook(
            lambda mod, inputs, output: output * float("nan") if trainer.state.global_step + 1 == step else None)
        return trainer

    monkeypatch.setattr(module, "build_trainer", poisoned)


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_the_guard_sees_the_loss_of_other_stages(monkeypatch, tmp_path, stage):
    from medgpt.training.guard import NonFiniteError

    _poison(monkeypatch, stage, 2)
    with pytest.raises(NonFiniteError, match="step 2: the loss is not finite.*checkpoint-1"):
        train_in_process(tmp_path, f"stage={stage}", "stage.args.max_steps=3", "stage.args.save_steps=1")


# Runs train.py as a user would, with an infinite gradient on the input embeddings at step 2 (the loss stays finite)
GRADIENT_POISON_DRIVER = """
import runpy, sys
from medgpt.stages import sft
build = sft.build_trainer
def poisoned(*args, **kwargs):
    trainer = build(*args, **kwargs)
    trainer.model.get_input_embeddings().weight.register_hook(
        lambda grad: grad * float("inf") if trainer.state.global_step + 1 == 2 else None)
    return trainer
sft.build_trainer = poisoned
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.parametrize("hardware", [(), ("hardware/deepspeed=zero2", "hardware.precision=fp32")],
                         ids=["plain", "deepspeed"])
def test_the_guard_sees_a_nonfinite_gradient_behind_a_finite_loss(tmp_path, hardware):
    """Plain: the callback reads the clipped gradients; DeepSpeed (partitioned gradients): the engine's norm. In a
    process of its own: DeepSpeed on CPU initialises torch.distributed, which must not outlive the test."""
    if hardware:
        pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, "-c", GRADIENT_POISON_DRIVER, f"output_root={tmp_path}", "logger=none",
                           *hardware, "stage.args.max_steps=3", "stage.args.save_steps=1"], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert re.search(r"step 2: the gradient norm \((nan|inf)\) is not finite.*checkpoint-1", done.stderr)
