"""Run folders are never overwritten (issue 19.2): a mistyped resume= leaves nothing behind, a fresh launch never
writes into a used folder, a resume with another stage, model or hardware is refused naming the differences, one
process per run folder (an fcntl lock naming its holder), and a resume keeps the first launch's records.

The refusals happen in medgpt.cli.ClaimRunFolder (a Hydra callback) before Hydra creates or writes the folder; they
are driven through `train.py`'s own entry point (medgpt.cli.train) in this process, except the lock, which needs a
second process.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m pytest -q tests/test_run_folders.py
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose, train_in_process
from medgpt import runs
from medgpt.config import redact, to_container


def launch(capsys, *overrides, env=None):
    """`python train.py <overrides>` in this process: (exit status, stderr)."""
    from medgpt.cli import train

    old, root = dict(os.environ), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    os.environ.update(env or {})
    try:
        with pytest.raises(SystemExit) as exit_:
            train(list(overrides))
    finally:
        os.environ.clear()
        os.environ.update(old)
        root.handlers[:] = handlers  # Hydra configured the root logger for its run
        root.setLevel(level)
    return exit_.value.code, capsys.readouterr().err


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_run(tmp_path):
    """A run folder as a first launch of stage=sft model=tiny hardware=cpu leaves it (config.yaml, a checkpoint)."""
    run = tmp_path / "runs" / "sft-tiny-cpu" / "first"
    (run / runs.CHECKPOINTS / "checkpoint-2").mkdir(parents=True)
    resolved = redact(to_container(compose(f"output_root={tmp_path}", "logger=none")))
    (run / runs.CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)), encoding="utf-8")
    (run / runs.HYDRA).mkdir()
    (run / runs.HYDRA / runs.OVERRIDES).write_text("- logger=none\n")
    return run


def test_a_mistyped_resume_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "out"
    status, err = launch(capsys, f"output_root={out}", "logger=none", f"resume={out}/runs/sft-tiny-cpu/typo")
    assert status == 2 and "resume=" in err and "no such folder" in err and "Traceback" not in err
    assert not out.exists(), f"left behind: {list(out.rglob('*'))}"


def test_resume_of_a_folder_that_is_no_run_is_refused(tmp_path, capsys):
    stranger = tmp_path / "home"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    status, err = launch(capsys, f"output_root={tmp_path}", "logger=none", f"resume={stranger}")
    assert status == 2 and "is not a run folder" in err
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]


def test_a_fresh_run_never_writes_into_a_used_folder(old_run, tmp_path, capsys):
    before = snapshot(old_run)
    status, err = launch(capsys, f"output_root={tmp_path}", "logger=none", env={"MEDGPT_RUN_ID": old_run.name})
    assert status == 2 and "already holds a run" in err and f"resume={old_run}" in err
    assert snapshot(old_run) == before


@pytest.mark.parametrize("override, named", [("hardware=lora", "hardware.method: 'full' -> 'lora'"),
                                             ("stage=dpo", "stage.name: 'sft' -> 'dpo'"),
                                             ("model.path=gpt2", "model.path: 'tiny' -> 'gpt2'")])
def test_resume_with_another_stage_model_or_hardware_is_refused(override, named, old_run, tmp_path, capsys):
    before = snapshot(old_run)
    status, err = launch(capsys, f"output_root={tmp_path}", "logger=none", override, f"resume={old_run}")
    assert status == 2 and "another stage, model or hardware" in err and named in err, err
    assert snapshot(old_run) == before, "a refused resume must not touch the run"


def test_changeable_fields_are_not_conflicts():
    from medgpt.config import resume_conflicts

    first = redact(to_container(compose("logger=none")))
    now = redact(to_container(compose("logger=none", "stage.args.max_steps=50", "stage.args.save_steps=5",
                                      "resume=auto", "run_name=again")))
    refused, changed = resume_conflicts(first, now)
    assert refused == [] and "stage.args.max_steps" in changed


def test_a_second_process_on_a_run_folder_fails_at_once_naming_the_holder(old_run, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from medgpt.runs import lock_run_folder; "
                               "lock_run_folder(sys.argv[1]); print('locked', flush=True); time.sleep(120)",
         str(old_run)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, str(ROOT / "train.py"), f"output_root={tmp_path}", "logger=none",
                                 f"resume={old_run}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by pid {holder.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        holder.kill()
        holder.wait()
    runs.lock_run_folder(old_run)  # the holder is gone: the folder is free again
    runs.release_run_folder(old_run)


def test_a_resume_keeps_the_first_launchs_config(tmp_path):
    """A second launch in a run folder (train_in_process: the run code without Hydra): config.yaml stays the
    first launch's, the second writes config.resume-1.yaml; another hardware is refused there too."""
    from medgpt.errors import UserError

    run = tmp_path / "run"  # where train_in_process runs; the first launch's record, as it left it
    run.mkdir()
    first = OmegaConf.to_yaml(OmegaConf.create(redact(to_container(compose(f"output_root={tmp_path}",
                                                                           "logger=none")))))
    (run / runs.CONFIG).write_text(first, encoding="utf-8")
    train_in_process(tmp_path, "stage.args.max_steps=1", "resume=auto")
    assert (run / runs.CONFIG).read_text() == first
    assert "max_steps: 1" in (run / "config.resume-1.yaml").read_text()
    assert (run / "environment.resume-1.json").exists() and (run / runs.FINAL).is_dir()
    with pytest.raises(UserError, match="another stage, model or hardware"):
        train_in_process(tmp_path, "hardware=lora", "resume=auto")
    assert not (run / "config.resume-2.yaml").exists()


def test_one_wandb_run_per_run_folder(tmp_path, monkeypatch):
    """Every launch in a run folder (the first and each resume) opens the same W&B run: its id comes from the folder,
    with resume="allow"; another folder gets another id."""
    import wandb

    from medgpt.training import tracking

    opened = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: opened.append(kwargs))
    cfg = compose("logger=wandb")
    for folder in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        tracking.start_logger(cfg.logger, folder, "name", {})
    assert [o["resume"] for o in opened] == ["allow"] * 3
    assert opened[0]["id"] == opened[1]["id"] != opened[2]["id"]
