"""Crash and resume, atomic checkpoints, reproducibility, the NaN guard and safety (issue 8).

A run is killed with SIGKILL in the middle of writing a checkpoint, resumed with `resume=auto`, and its per-step
losses after the resume point are compared with an uninterrupted run of the same seed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose, run_cli, train_in_process

STEPS = ("stage.args.max_steps=8", "stage.args.save_steps=2", "stage.args.logging_steps=1",
         "stage.args.save_total_limit=2")
KILL_WHILE_SAVING = 6  # SIGKILL half-way through writing checkpoint-6: checkpoint-4 is the newest complete one
FAKE_SECRETS = {"WANDB_API_KEY": "fake-wandb-key-0123456789abcdef0123456789abcdef",
                "HF_TOKEN": "hf_fakeTokenThatMustNeverBeWritten0123"}

# Runs train.py as a user would, but SIGKILLs itself inside the trainer's checkpoint writer at one step
# (after the weights and optimizer are written, before the RNG state): a crash in the middle of a save.
KILL_DRIVER = """
import os, runpy, signal, sys
import transformers
save_rng = transformers.Trainer._save_rng_state
def dying_save_rng(self, output_dir):
    if self.state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng(self, output_dir)
transformers.Trainer._save_rng_state = dying_save_rng
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def losses(run_dir: Path) -> dict:
    history = json.loads((run_dir / "history.json").read_text())["log_history"]
    return {h["step"]: h for h in history if "loss" in h}


def stage_overrides(stage: str):
    if stage != "sft":
        pytest.importorskip(f"medgpt.stages.{stage}")
    return (f"stage={stage}",)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted SFT run: checkpoints at 2, 4, 6, 8 (two kept), a loss logged every step."""
    return train_in_process(tmp_path_factory.mktemp("reference"), *STEPS)


@pytest.fixture(scope="module", params=["sft", "dpo"])
def crash_and_resume(request, tmp_path_factory, reference_run):
    """(stage, reference run folder, run folders of the group, killed process, resumed process)."""
    stage = stage_overrides(request.param)
    reference = reference_run[0] if request.param == "sft" else \
        train_in_process(tmp_path_factory.mktemp("reference"), *stage, *STEPS)[0]
    out = tmp_path_factory.mktemp("crashed")
    args = [*stage, *STEPS, f"output_root={out}", "logger=wandb"]
    env = {"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **FAKE_SECRETS}
    killed = subprocess.run([sys.executable, "-c", KILL_DRIVER.format(step=KILL_WHILE_SAVING), *args], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    resumed = run_cli(*args, "resume=auto", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (group,) = (out / "runs").iterdir()
    runs = list(group.iterdir())
    return request.param, reference, runs, killed, resumed


def test_killed_run_resumes_with_identical_losses(crash_and_resume):
    stage, reference, runs, killed, resumed = crash_and_resume
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(runs) == 1, "resume=auto must continue the killed run's folder, not start a new one"
    run = runs[0]
    assert "resuming from" in resumed.stdout + resumed.stderr and "checkpoint-4" in resumed.stdout + resumed.stderr
    assert "differs from the run's first launch" not in resumed.stdout + resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 8
    expected, got = losses(reference), losses(run)
    after = [step for step in expected if step > 4]
    assert after == [5, 6, 7, 8] and all(step in got for step in after)
    diff = max(abs(got[s]["loss"] - expected[s]["loss"]) for s in after)
    print(f"{stage}: max |loss difference| after resume = {diff:.3g}")
    assert diff <= 1e-4
    assert [got[s]["learning_rate"] for s in after] == pytest.approx([expected[s]["learning_rate"] for s in after])
    assert [got[s]["grad_norm"] for s in after] == pytest.approx([expected[s]["grad_norm"] for s in after], abs=1e-3)


def test_resume_rewrites_the_checkpoint_the_crash_left_unmarked(crash_and_resume):
    from medgpt.runs import problem

    _stage, _reference, (run,), _killed, resumed = crash_and_resume
    assert "checkpoint-6, left by an earlier attempt" in resumed.stdout + resumed.stderr
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["checkpoint-6", "checkpoint-8"]
    assert all(problem(checkpoints / name) is None for name in ("checkpoint-6", "checkpoint-8"))


def test_no_secret_lands_in_the_run_folder(crash_and_resume):
    stage, _reference, (run,), _killed, resumed = crash_and_resume
    assert any((run / "wandb").rglob("*.wandb")), "the W&B run must exist for this check to mean anything"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        data = path.read_bytes()
        for name, secret in FAKE_SECRETS.items():
            assert secret.encode() not in data, f"{name} leaked into {path}"
    for secret in FAKE_SECRETS.values():
        assert secret not in resumed.stdout + resumed.stderr


def test_same_seed_gives_bit_identical_losses(reference_run, tmp_path):
    first, _ = reference_run
    second, _ = train_in_process(tmp_path, *STEPS)
    a, b = losses(first), losses(second)
    assert len(a) == 8 and [a[s]["loss"] for s in a] == [b[s]["loss"] for s in b]
    other, _ = train_in_process(tmp_path / "seed", *STEPS, "seed=7", "stage.args.max_steps=2")
    assert losses(other)[1]["loss"] != a[1]["loss"], "the seed must matter, or the test above proves nothing"


def test_run_folder_records_versions_and_git_state(reference_run):
    env = json.loads((reference_run[0] / "environment.json").read_text())
    for package in ("torch", "transformers", "peft", "trl", "deepspeed"):
        assert env["versions"][package], package
    assert len(env["commit"]) == 40 and isinstance(env["dirty"], bool)


def test_checkpoints_are_marked_complete_and_rotated(reference_run):
    from medgpt.runs import MARKER, problem

    checkpoints = reference_run[0] / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["checkpoint-6", "checkpoint-8"]
    for name in ("checkpoint-6", "checkpoint-8"):
        assert (checkpoints / name / MARKER).exists() and problem(checkpoints / name) is None


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_best_checkpoint_survives_rotation_and_names_its_real_folder(tmp_path):
    run, metrics = train_in_process(tmp_path, "stage.args.max_steps=6", "stage.args.save_steps=2",
                                    "stage.args.eval_strategy=steps", "stage.args.eval_steps=2",
                                    "stage.args.load_best_model_at_end=true", "stage.args.save_total_limit=1",
                                    "data.eval_split=0.2")
    state = json.loads((run / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    assert best.parent == run / "checkpoints" and best.is_dir(), best
    assert {p.name for p in (run / "checkpoints").iterdir() if p.is_dir()} == {"checkpoint-6", best.name}


def test_resume_skips_a_truncated_checkpoint_and_says_so(reference_run, tmp_path, caplog):
    from medgpt.training.checkpoints import resume_checkpoint
    from medgpt.errors import UserError

    run = _copy(reference_run[0], tmp_path)
    weights = run / "checkpoints" / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="medgpt.training.checkpoints"):
        assert resume_checkpoint("auto", run) == str(run / "checkpoints" / "checkpoint-6")
    assert "skipping" in caplog.text and "checkpoint-8" in caplog.text and "model.safetensors is corrupt" in caplog.text
    with pytest.raises(UserError, match="corrupt.*newest complete one is .*checkpoint-6"):
        resume_checkpoint(str(run / "checkpoints" / "checkpoint-8"), run)
    (run / "checkpoints" / "checkpoint-6" / "checkpoint_complete.json").unlink()
    with pytest.raises(UserError, match="no complete checkpoint"):
        resume_checkpoint(str(run), run)
    assert resume_checkpoint("auto", run) is None  # auto with nothing usable: start from scratch


def test_rotation_never_deletes_the_last_complete_checkpoint(tmp_path):
    from medgpt.training.checkpoints import rotate
    from medgpt.runs import MARKER, TMP_PREFIX

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / MARKER).write_text('{"files": {}}')
    (tmp_path / f"{TMP_PREFIX}checkpoint-8").mkdir()
    rotate(tmp_path, limit=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]


def test_resume_auto_picks_the_newest_unfinished_run_of_the_group(tmp_path):
    from medgpt.runs import MARKER, run_folder

    for name, status, checkpoint in (("2026-01-01_a", None, True), ("2026-01-02_b", "completed", True),
                                     ("2026-01-03_c", "failed", False)):
        run = tmp_path / name
        (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        if checkpoint:
            (run / "checkpoints" / "checkpoint-2" / MARKER).write_text('{"files": {}}')
        if status:
            (run / "metrics.json").write_text(json.dumps({"status": status}))
    assert run_folder(str(tmp_path), "auto") == str(tmp_path / "2026-01-01_a")
    assert run_folder(str(tmp_path), str(tmp_path / "x" / "checkpoints" / "checkpoint-4")) == str(tmp_path / "x")
    fresh = run_folder(str(tmp_path / "empty"), "auto")
    assert Path(fresh).parent == tmp_path / "empty"


def test_lora_run_resumes_exactly_in_process(tmp_path, caplog):
    """The resume path for adapters (the subprocess test above covers full fine-tuning)."""
    lora = ("hardware=lora", "stage.args.max_steps=4", "stage.args.save_steps=2", "stage.args.logging_steps=1",
            "stage.args.learning_rate=1e-3")
    uninterrupted, _ = train_in_process(tmp_path / "a", *lora)
    crashed = Path(shutil.copytree(uninterrupted, tmp_path / "b" / "run"))
    for leftover in ("final", "metrics.json", "history.json", "checkpoints/checkpoint-4"):
        shutil.rmtree(crashed / leftover) if (crashed / leftover).is_dir() else (crashed / leftover).unlink()
    with caplog.at_level(logging.WARNING, logger="medgpt.training.checkpoints"):
        resumed, metrics = train_in_process(tmp_path / "b", *lora, "resume=auto")
    assert f"resuming from {crashed / 'checkpoints' / 'checkpoint-2'}" in caplog.text
    assert resumed == crashed and metrics["global_step"] == 4
    assert (crashed / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").exists()
    expected, got = losses(uninterrupted), losses(resumed)
    assert max(abs(got[s]["loss"] - expected[s]["loss"]) for s in (3, 4)) <= 1e-4


def test_resume_warns_about_changed_overrides(reference_run):
    from omegaconf import OmegaConf

    from medgpt.config import check_resume, to_container

    first = OmegaConf.to_container(OmegaConf.load(reference_run[0] / "config.yaml"))
    same = (f"output_root={reference_run[0].parent}", "logger=none", *STEPS, "resume=auto")
    assert check_resume(first, to_container(compose(*same)), reference_run[0]) == []
    changed = to_container(compose(*same, "stage.args.learning_rate=1e-3"))
    assert check_resume(first, changed, reference_run[0]) == ["stage.args.learning_rate"]


def _poison_step(monkeypatch, step: int):
    """Make the forward pass of one training step produce NaN (every stage's model has input embeddings)."""
    from medgpt.stages import sft

    build = sft.build_trainer

    def poisoned(**kwargs):
        trainer = build(**kwargs)
        trainer.model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: output * float("nan") if trainer.state.global_step + 1 == step else None)
        return trainer

    monkeypatch.setattr(sft, "build_trainer", poisoned)


def test_nonfinite_loss_stops_the_run_naming_step_and_checkpoint(monkeypatch, tmp_path, capsys):
    from medgpt.training.run import main

    _poison_step(monkeypatch, 3)
    # HF's logging_nan_inf_filter stays at its default (on): the guard must see through it
    cfg = compose(f"output_root={tmp_path}", "logger=none", "stage.args.max_steps=5", "stage.args.save_steps=2")
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    assert "step 3: the loss is not finite" in message and "checkpoint-2" in message and "Traceback" not in message
    (run,) = (tmp_path / "runs" / "sft-tiny-cpu").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "step 3" in metrics["error"]
    assert not (run / "final").exists()


def test_nonfinite_step_is_skipped_and_counted(monkeypatch, tmp_path):
    from safetensors.torch import load_file

    _poison_step(monkeypatch, 3)
    run, metrics = train_in_process(tmp_path, "stage.args.max_steps=4", "stage.args.save_steps=1",
                                    "stage.args.save_total_limit=null", "guard.skip_nonfinite=true")
    assert metrics["status"] == "completed"
    assert metrics["nonfinite_skipped_steps"] == 1 and metrics["nonfinite_steps"] == [3]
    weights = {s: load_file(run / "checkpoints" / f"checkpoint-{s}" / "model.safetensors") for s in (2, 3, 4)}
    assert all((weights[2][k] == weights[3][k]).all() for k in weights[2]), "the NaN step must not change weights"
    assert any((weights[3][k] != weights[4][k]).any() for k in weights[3]), "training goes on after it"
    assert all(t.isfinite().all() for t in load_file(run / "final" / "model.safetensors").values())


def test_final_folder_holds_safetensors_and_no_pickle(reference_run):
    final = reference_run[0] / "final"
    assert (final / "model.safetensors").exists()
    assert not [p.name for p in final.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert json.loads((final / "medgpt.json").read_text())["trust_remote_code"] is False


def test_pickle_weights_are_refused_unless_allowed(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from medgpt.config import resolve
    from medgpt.errors import UserError
    from medgpt.modeling.load import load_model

    folder = Path(shutil.copytree(tiny_dir, tmp_path / "pickled"))
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    cfg = compose(f"model.path={folder}")
    settings = resolve(cfg, {"cuda": False, "bf16": False})
    with pytest.raises(UserError, match="pickle weights only.*allow_pickle=true"):
        load_model(cfg.model, cfg.hardware, settings)
    assert load_model(cfg.model, cfg.hardware, settings, allow_pickle=True) is not None


def test_trust_remote_code_is_off_unless_a_model_config_sets_it():
    for model in (p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")):
        cfg = compose(f"model={model}")
        text = (ROOT / "conf" / "model" / f"{model}.yaml").read_text()
        if cfg.model.family and f"family/{cfg.model.family}@_here_" in text:  # the family base sets it
            text += (ROOT / "conf" / "model" / "family" / f"{cfg.model.family}.yaml").read_text()
        assert cfg.model.trust_remote_code is ("trust_remote_code: true" in text), model
