"""Sweeps: a real 2x2 multirun of the tiny model (one job fails on purpose) -> leaderboard, plots, W&B offline
read-back; a 3-trial optuna search logged to TensorBoard; the conf/sweep presets.

Both sweeps run as `python train.py -m ...` subprocesses started together (their imports overlap).
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONF, ROOT, compose
from medgpt.leaderboard import format_table, load_rows

GRID = ["-m", "hardware=cpu,lora", "hardware.lora_r=8,0",  # lora with r=0 fails inside peft: a failed job
        "stage.args.max_steps=2", "stage.args.logging_steps=1", "logger=wandb", "logger.log_model=true"]
SEARCH = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1",
          "hydra.sweeper.sampler.seed=0", "stage.args.learning_rate=tag(log,interval(1e-4,1e-2))",
          "stage.args.max_steps=2", "stage.args.logging_steps=1", "data.eval_split=0", "logger=tensorboard"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _start(args, out: Path, run_id: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_DATA_DIR": str(out / "wandb-data"),
           "WANDB_CACHE_DIR": str(out / "wandb-cache"), "OMP_NUM_THREADS": "1"}
    env.pop("MEDGPT_RUN_ID", None)
    if run_id:
        env["MEDGPT_RUN_ID"] = run_id
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"output_root={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """(grid sweep folder, its console output, optuna sweep folder, its console output)."""
    grid_out, search_out = tmp_path_factory.mktemp("grid"), tmp_path_factory.mktemp("search")
    grid, search = _start(GRID, grid_out), _start(SEARCH, search_out, run_id="search")
    grid_log, search_log = grid.communicate(timeout=600)[0], search.communicate(timeout=600)[0]
    assert grid.returncode == 0, grid_log[-3000:]
    assert search.returncode == 0, search_log[-3000:]
    (grid_dir,) = (grid_out / "multirun").glob("*/*")  # default layout: multirun/<date>/<time>
    return grid_dir, grid_log, search_out / "multirun" / "search", search_log


def test_grid_sweep_records_each_job_and_goes_on_after_a_failure(sweeps):
    grid_dir, log, _, _ = sweeps
    rows = load_rows([str(grid_dir)])
    assert [r["job"].rsplit("/", 1)[1] for r in rows] == ["0", "1", "2", "3"]
    assert [(r["hardware"], r["hardware.lora_r"]) for r in rows] == [("cpu", 8), ("cpu", 0), ("lora", 8), ("lora", 0)]
    assert all(r["stage.args.max_steps"] == 2 for r in rows)
    failed = rows[3]
    assert failed["status"] == "failed" and "positive integer" in failed["error"]
    for row in rows[:3]:
        assert row["status"] == "completed" and row["global_step"] == 2
        assert isinstance(row["train_loss"], float) and isinstance(row["eval_loss"], float)
        assert (Path(row["run_dir"]) / "final" / "medgpt.json").is_file()
    # the glob of job folders gives the same rows as the multirun folder
    assert [r["run_dir"] for r in load_rows([f"{grid_dir}/*"])] == [r["run_dir"] for r in rows]
    # the end-of-run summary of each job, then the sweep's leaderboard printed by the Hydra callback
    assert log.count("run folder") == 3 and "wandb sync" in log
    assert f"python sweep.py {grid_dir}" in log
    table = log.split(f"sweep {grid_dir}: 4 job(s)")[1]
    assert "hardware.lora_r" in table and "failed" in table


def test_sweep_py_table_files_and_plots_without_training_imports(sweeps):
    grid_dir, _, _, _ = sweeps
    out = grid_dir / "report"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import sweep; rc = sweep.main(sys.argv[2:]); "
            "heavy = [m for m in ('torch', 'trl', 'transformers', 'peft') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), str(grid_dir), "--sort", "train_loss", "--format",
                           "md", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].split(" | ")[:3] == ["| job", "hardware", "hardware.lora_r"]
    assert len(lines) == 1 + 4 and "failed" in lines[-1]  # header + 4 jobs; the failed one sorted last
    losses = [float(line.split(" | ")[4]) for line in lines[1:4]]
    assert losses == sorted(losses)

    saved = json.loads((out / "leaderboard.json").read_text())
    assert [(r["hardware"], r["hardware.lora_r"]) for r in saved][-1] == ("lora", 0)
    assert len(list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))) == 4
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["loss_curves.png", "train_loss_vs_hardware.lora_r.png", "train_loss_vs_hardware.png"]
    import matplotlib.image

    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        height, width = matplotlib.image.imread(out / name).shape[:2]
        assert height > 200 and width > 300


def _wandb_records(run_dir: Path) -> list:
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_has_group_name_nested_config_losses_and_model(sweeps):
    grid_dir, _, _, _ = sweeps
    job = grid_dir / "2"  # hardware=lora hardware.lora_r=8
    records = _wandb_records(job)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["run_group"] == f"{grid_dir.parent.name}/{grid_dir.name}"
    assert run["display_name"] == "2 hardware=lora lora_r=8"
    config = run["config"]["update"]
    assert config["cfg"]["hardware"] == {**config["cfg"]["hardware"], "name": "lora", "lora_r": 8}
    assert config["cfg"]["stage"]["args"]["max_steps"] == 2
    assert config["run_dir"] == str(job) and len(config["commit"]) == 40
    assert "hardware.lora_r=8" in config["overrides"]
    logged = [r["history"]["item"]["train/loss"] for r in records
              if r["type"] == "history" and "train/loss" in r["history"]["item"]]
    history = json.loads((job / "history.json").read_text())["log_history"]
    assert logged == pytest.approx([h["loss"] for h in history if "loss" in h])
    artifact = next(r["artifact"] for r in records if r["type"] == "artifact")
    assert artifact["type"] == "model" and "final" in artifact["aliases"]
    files = {c["path"] for c in artifact["manifest"]["contents"]}
    assert {"adapter_model.safetensors", "medgpt.json"} <= files


def test_optuna_search_minimises_the_returned_metric_and_logs_tensorboard(sweeps):
    _, _, search_dir, log = sweeps  # MEDGPT_RUN_ID names the sweep folder
    rows = load_rows([str(search_dir)])
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    rates = [r["stage.args.learning_rate"] for r in rows]
    assert len(set(rates)) == 3 and all(1e-4 <= r <= 1e-2 for r in rates)
    result = yaml.safe_load((search_dir / "optimization_results.yaml").read_text())
    best = min(rows, key=lambda r: r["train_loss"])
    assert result["best_value"] == pytest.approx(best["train_loss"])
    assert result["best_params"]["++stage.args.learning_rate"] == pytest.approx(best["stage.args.learning_rate"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = Path(rows[0]["run_dir"])
    events = EventAccumulator(str(job / "tensorboard")).Reload()
    logged = [e.value for e in events.Scalars("train/loss")]
    history = json.loads((job / "history.json").read_text())["log_history"]
    assert logged == pytest.approx([h["loss"] for h in history if "loss" in h], rel=1e-5)
    assert "tensorboard --logdir" in log


def test_format_table_sorts_missing_last_and_speaks_every_format():
    rows = [{"job": "s/0", "override_keys": ["a"], "a": 1, "status": "completed", "train_loss": 2.5},
            {"job": "s/1", "override_keys": ["a"], "a": 2, "status": "failed", "error": "boom", "train_loss": None},
            {"job": "s/2", "override_keys": ["a"], "a": 3, "status": "completed", "train_loss": 1.5}]
    text = format_table(rows, sort="train_loss").splitlines()
    assert text[0].split() == ["job", "a", "status", "train_loss", "error"]
    assert [line.split()[0] for line in text[2:]] == ["s/2", "s/0", "s/1"]
    assert [r["job"] for r in json.loads(format_table(rows, sort="-train_loss", fmt="json"))] == ["s/0", "s/2", "s/1"]
    assert format_table(rows, columns=["job", "a"], fmt="csv").splitlines() == ["job,a", "s/0,1", "s/1,2", "s/2,3"]
    assert format_table(rows, fmt="md").splitlines()[1] == "|---|---|---|---|---|"
    with pytest.raises(ValueError, match="fmt"):
        format_table(rows, fmt="html")


def test_load_rows_marks_a_job_without_metrics_incomplete(tmp_path):
    job = tmp_path / "multirun" / "x" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- ++stage.args.learning_rate=1e-4\n- hardware=lora\n")
    (row,) = load_rows([str(tmp_path / "multirun" / "*")])
    assert row["status"] == "incomplete" and row["stage.args.learning_rate"] == 1e-4 and row["hardware"] == "lora"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
def test_sweep_presets_compose(preset):
    if "override /stage: dpo" in (CONF / "sweep" / f"{preset}.yaml").read_text() and \
            not (CONF / "stage" / "dpo.yaml").exists():
        pytest.skip("conf/stage/dpo.yaml is not there yet")
    cfg = compose(f"+sweep={preset}", return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{preset} sweeps nothing"
    for key in params:  # every swept key exists in the composed config (or is a trainer field, for ++ keys)
        key = key.lstrip("+")
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        assert key.split(".")[-1] in node or key.startswith("stage.args."), key
    if preset == "lr_search":
        assert "optuna" in cfg.hydra.sweeper._target_ and cfg.objective == "eval_loss"


def test_sweep_folder_follows_medgpt_run_id(monkeypatch):
    monkeypatch.setenv("MEDGPT_RUN_ID", "lr-study-1")
    cfg = compose("output_root=out", return_hydra_config=True)
    assert cfg.hydra.sweep.dir == "out/multirun/lr-study-1"


def test_progress_bar_only_for_long_loops():
    from medgpt.data.tokenize import progress

    long_bar, short_bar = progress(list(range(5000)), "tokenize chats"), progress(list(range(10)), "tokenize chats")
    assert long_bar.disable is False and short_bar.disable is True
    long_bar.close()
