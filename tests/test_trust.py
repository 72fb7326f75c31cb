"""Trust and integrity (issue 19): one loading policy for every loader, secrets kept out of the run folder, the hub
fast-fail and a quiet CPU run (issue 17.8).

Hostile folders: pickle-only weights whose unpickling would create a marker file; a model folder whose medgpt.json
asks for remote code and whose config.json maps its classes (auto_map) to a module that creates a marker file when
imported. Every loader refuses them with exit status 2 and a one-line reason; the marker never appears. With the
user's consent on the command the same folder does run its code (so the hostile folders are proven hostile).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m pytest -q tests/test_trust.py
"""
from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
import sys
import time
from pathlib import Path

import pytest

from conftest import compose, run_cli, train_in_process

EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("the folder's own code ran")
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification


class EvilConfig(Qwen2Config):
    model_type = "evil"


class EvilModel(Qwen2ForCausalLM):
    config_class = EvilConfig


class EvilRewardModel(Qwen2ForSequenceClassification):
    config_class = EvilConfig
"""


class Payload:
    """Unpickling this creates the marker file (what a hostile pytorch_model.bin can do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def hostile(tiny_dir, tmp_path):
    """(marker, folders): remote-code model, pickle-only model, adapters on each, a 'reward model' asking for code."""
    marker = tmp_path / "MARKER"
    code = Path(shutil.copytree(tiny_dir, tmp_path / "remote_code"))
    config = json.loads((code / "config.json").read_text())
    config.update(model_type="evil", architectures=["EvilModel"],
                  auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                            "AutoModelForSequenceClassification": "evil.EvilRewardModel"})
    (code / "config.json").write_text(json.dumps(config))
    (code / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    info = json.loads((code / "medgpt.json").read_text()) if (code / "medgpt.json").exists() else {}
    (code / "medgpt.json").write_text(json.dumps({**info, "trust_remote_code": True, "template": "qwen",
                                                  "stage": "rm"}))
    pickled = Path(shutil.copytree(tiny_dir, tmp_path / "pickled"))
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload(str(marker))}))
    adapters = {}
    for name, base in (("adapter_on_code", code), ("adapter_on_pickle", pickled)):
        adapter = tmp_path / name
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps(
            {"base_model_name_or_path": str(base), "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2,
             "target_modules": ["q_proj"], "lora_alpha": 4}))
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tiny_dir / f).exists():
                shutil.copy(tiny_dir / f, adapter / f)
        (adapter / "adapter_model.safetensors").write_bytes(b"")
        adapters[name] = adapter
    return marker, {"remote_code": code, "pickled": pickled, **adapters}


@contextlib.contextmanager
def kept_logging():
    """Hydra configures the root logger for its run: put it back (its handlers write to a captured stream)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def cli(capsys, *argv):
    """`medgpt <argv>` in this process (medgpt.cli.main, the console command): (status, stderr)."""
    from medgpt.cli import main

    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


def assert_refused(status, err, *words):
    assert status == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


INFERENCE = {
    "chat": lambda folder, tmp: ["chat", folder, "--prompt", "hi", "--max-new-tokens", "2"],
    "serve": lambda folder, tmp: ["serve", folder, "--port", "0"],
    "demo": lambda folder, tmp: ["demo", folder, "--port", "0"],
    "rag": lambda folder, tmp: ["rag", folder, "--docs", tmp / "doc.txt", "--question", "hi"],
}


@pytest.mark.parametrize("command", sorted(INFERENCE))
@pytest.mark.parametrize("folder", ["remote_code", "pickled", "adapter_on_code", "adapter_on_pickle"])
def test_inference_commands_refuse_hostile_folders(command, folder, hostile, tmp_path, capsys):
    marker, folders = hostile
    (tmp_path / "doc.txt").write_text("Headache: rest and water.\n")
    status, err = cli(capsys, *INFERENCE[command](folders[folder], tmp_path))
    assert_refused(status, err, "--allow-pickle" if "pickle" in folder else "--trust-remote-code")
    assert not marker.exists(), f"medgpt {command} ran the folder's code"


@pytest.mark.parametrize("folder", ["remote_code", "pickled"])
def test_vocab_refuses_hostile_bases(folder, hostile, tmp_path, capsys):
    marker, folders = hostile
    (tmp_path / "corpus.txt").write_text("头痛 发热 咳嗽\n" * 20, encoding="utf-8")
    status, err = cli(capsys, "vocab", "--corpus", tmp_path / "corpus.txt", "--base", folders[folder],
                      "--output", tmp_path / "out", "--vocab-size", "300")
    assert_refused(status, err, "--allow-pickle" if folder == "pickled" else "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_merge_refuses_an_adapter_whose_base_needs_code_or_pickle(hostile, tmp_path, capsys):
    marker, folders = hostile
    for name, flag in (("adapter_on_code", "--trust-remote-code"), ("adapter_on_pickle", "--allow-pickle")):
        status, err = cli(capsys, "merge", folders[name], "--output", tmp_path / "merged")
        assert_refused(status, err, flag, "base_model_name_or_path")
    assert not marker.exists() and not (tmp_path / "merged").exists()


def test_training_refuses_a_folder_asking_for_code_through_train_py(hostile, tmp_path, capsys):
    """train.py's entry point (medgpt.cli.train, Hydra and all): medgpt.json's trust_remote_code=true is not
    consent; exit 2, one line naming model.trust_remote_code=true."""
    from medgpt.cli import train

    marker, folders = hostile
    with kept_logging(), pytest.raises(SystemExit) as exit_:
        train([f"model.path={folders['remote_code']}", f"output_root={tmp_path}", "logger=none",
               "stage.args.max_steps=1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "model.trust_remote_code=true" in err.strip().splitlines()[-1]
    assert not marker.exists()


@pytest.mark.parametrize("overrides", [("stage=eval", "data=eval_demo"), ("stage=sft", "hardware=lora")],
                         ids=["eval", "sft-pickled-adapter-base"])
def test_training_and_eval_refuse_hostile_folders_in_process(overrides, hostile, tmp_path):
    from medgpt.errors import UserError

    marker, folders = hostile
    folder = folders["remote_code"] if overrides[0] == "stage=eval" else folders["adapter_on_pickle"]
    with pytest.raises(UserError, match="trust_remote_code=true|allow_pickle=true"):
        train_in_process(tmp_path, f"model.path={folder}", "stage.args.max_steps=1" if "sft" in overrides[0]
                         else "seed=1", *overrides)
    assert not marker.exists()


def test_pipeline_refuses_and_exits_2(hostile, tmp_path, capsys):
    marker, folders = hostile
    status, err = cli(capsys, "pipeline", "sft", f"model.path={folders['pickled']}", f"output_root={tmp_path}",
                      "logger=none", "stage.args.max_steps=1")
    assert_refused(status, err, "allow_pickle=true")
    assert not marker.exists()


def test_reward_model_of_ppo_needs_the_runs_own_consent(hostile):
    from medgpt.errors import UserError
    from medgpt.modeling.load import LoadPolicy
    from medgpt.training.rewards import load_reward_model

    marker, folders = hostile
    cfg = compose("stage=ppo", f"stage.reward_model={folders['remote_code']}")
    with pytest.raises(UserError, match="model.trust_remote_code=true"):
        load_reward_model(cfg.stage.reward_model, LoadPolicy.of_run(cfg))
    assert not marker.exists()


def test_consent_on_the_command_runs_the_code(hostile):
    """The same folder with --trust-remote-code does import its module: the refusals above are real."""
    from medgpt.modeling.load import LoadPolicy, load_for_inference

    marker, folders = hostile
    model, _tokenizer, _info = load_for_inference(str(folders["remote_code"]),
                                                  policy=LoadPolicy(trust_remote_code=True))
    assert marker.exists() and type(model).__name__ == "EvilModel"


def test_a_known_architecture_with_an_auto_map_loads_without_running_it(hostile, tmp_path):
    """auto_map beside a model_type transformers knows: loaded with transformers' own class, the module never runs."""
    from medgpt.modeling.load import load_for_inference

    marker, folders = hostile
    folder = Path(shutil.copytree(folders["remote_code"], tmp_path / "known"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen2",
                                                    "architectures": ["Qwen2ForCausalLM"]}))
    model, _tokenizer, _info = load_for_inference(str(folder))
    assert type(model).__name__ == "Qwen2ForCausalLM" and not marker.exists()


# ---- the hub: fail in seconds without it (issue 17.8) ----

@pytest.fixture
def blackhole(monkeypatch, tmp_path):
    """A hub endpoint that accepts connections and never answers; an empty hub cache."""
    import socket

    from huggingface_hub import constants

    from medgpt.modeling.load import hub_unreachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub_unreachable.cache_clear()
    yield endpoint
    hub_unreachable.cache_clear()
    server.close()


def test_an_unreachable_hub_fails_in_seconds_naming_the_ways_forward(blackhole):
    from medgpt.errors import UserError
    from medgpt.modeling.load import load_tokenizer

    cfg = compose("stage=dpo", "model=qwen1.5-7b", "hardware=qlora4")
    started = time.time()
    with pytest.raises(UserError) as error:
        load_tokenizer(cfg.model)
    elapsed = time.time() - started
    print(f"unreachable hub: refused after {elapsed:.1f} s")
    assert elapsed < 10
    message = str(error.value)
    assert "cannot be reached" in message and "HF_HUB_OFFLINE=1" in message and "model.path=<local folder>" in message


def test_an_unreachable_hub_uses_the_cached_copy(blackhole, tiny_dir, tmp_path):
    """A model already in the hub cache loads without waiting for the network."""
    from medgpt.modeling.load import load_tokenizer

    repo = tmp_path / "hub" / "models--someone--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_dir, repo / "snapshots" / ("0" * 40))
    cfg = compose("model.path=someone/cached-model")
    started = time.time()
    tokenizer = load_tokenizer(cfg.model)
    assert tokenizer is not None and time.time() - started < 10


def test_design_card_command_without_the_hub_fails_fast_and_quietly(tmp_path):
    """`python train.py stage=dpo model=qwen1.5-7b hardware=qlora4` against a hub that never answers: exit 2 with
    the ways forward, a few seconds after the run starts (not a minute of retries); no notice about optional
    bitsandbytes kernels a CPU run does not use."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        result = run_cli("stage=dpo", "model=qwen1.5-7b", "hardware=qlora4", f"output_root={tmp_path}",
                         "logger=none", env={"HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}",
                                             "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}, timeout=150)
    finally:
        server.close()
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "HF_HUB_OFFLINE=1" in last and "model.path=<local folder>" in last and "Traceback" not in result.stderr
    assert "kernels" not in result.stdout + result.stderr
    stamps = [line[1:24] for line in (result.stdout + result.stderr).splitlines() if line.startswith("[20")]
    from datetime import datetime

    times = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in stamps]
    waited = (times[-1] - times[0]).total_seconds()  # from the run's first log line to its failure
    print(f"design-card command without the hub: failed {waited:.1f} s after the run started")
    assert waited < 10


# ---- credentials: never in the run folder, W&B or TensorBoard (issue 19.4) ----

SECRETS = {"HF_TOKEN": "hf_fakeEnvironmentToken0123456789", "MY_ACCESS_KEY": "fake-interpolated-key-0123456789",
           "literal": "fake-literal-password-0123456789"}


def test_credentials_are_redacted_in_every_file_of_the_run_folder(tmp_path, capsys, monkeypatch):
    """Through train.py's entry point with W&B (offline): a token in the environment, a credential-like key given
    on the command line, and one given by ${oc.env:...} interpolation; then every file of the run folder (config.yaml,
    .hydra/*, environment.json, train.log, W&B's files) is searched for the three values."""
    from medgpt.cli import train

    for name in ("HF_TOKEN", "MY_ACCESS_KEY"):
        monkeypatch.setenv(name, SECRETS[name])
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MEDGPT_RUN_ID", "secrets")
    argv = [f"output_root={tmp_path}", "logger=wandb", "stage.args.max_steps=1",
            f"hardware.args.db_password={SECRETS['literal']}", "hardware.args.access_key=${oc.env:MY_ACCESS_KEY}"]
    with kept_logging():
        try:
            train(argv)
        except SystemExit as e:
            assert not e.code, capsys.readouterr().err[-2000:]
    run = tmp_path / "runs" / "sft-tiny-cpu" / "secrets"
    assert "db_password: <redacted>" in (run / "config.yaml").read_text()
    assert "access_key: <redacted>" in (run / "config.yaml").read_text()
    assert any((run / "wandb").rglob("*.wandb")) and (run / ".hydra" / "overrides.yaml").exists()
    files = [p for p in run.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} leaked into {path}"
    assert all(secret not in " ".join(sys.argv) for secret in SECRETS.values())


def test_a_hub_token_override_is_refused_pointing_to_hf_token(tmp_path, capsys):
    from medgpt.cli import train

    with kept_logging(), pytest.raises(SystemExit) as exit_:
        train([f"output_root={tmp_path}", "logger=none", "stage.args.hub_token=hf_neverWrittenAnywhere0123"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "stage.args.hub_token" in err and "HF_TOKEN" in err
    assert not tmp_path.joinpath("runs").exists() or not any(
        b"hf_neverWrittenAnywhere0123" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_redaction_keeps_what_is_not_a_credential():
    from medgpt.config import REDACTED, redact

    config = {"tokenizer": {"pad_token": "<pad>", "eos_token": "</s>"}, "judge_key_env": "OPENAI_API_KEY",
              "max_new_tokens": 5, "hub_token": None, "wandb": {"api_key": "abc"}, "client_secret": "s3cr3t"}
    assert redact(config, []) == {**config, "wandb": {"api_key": REDACTED}, "client_secret": REDACTED}
    assert redact(["logger=wandb", "+hardware.args.api_key=abc"], []) == ["logger=wandb",
                                                                         f"+hardware.args.api_key={REDACTED}"]


def test_the_held_notice_is_shown_when_a_quantized_model_loads(caplog):
    """The import-time notice is held back (test_design_card_command_... shows a run prints none) and shown when a
    quantized model loads; any other bitsandbytes message passes."""
    from medgpt.modeling.load import OptionalKernelNotice, show_held_notices

    record = logging.LogRecord("bitsandbytes.backends.cpu.ops", logging.WARNING, __file__, 1,
                               "Failed to load CPU gemm_4bit_forward from kernels-community: %s", ("no kernels",),
                               None)
    assert OptionalKernelNotice().filter(record) is False  # held back
    other = logging.LogRecord("bitsandbytes.backends.cpu.ops", logging.WARNING, __file__, 1, "a real problem", (),
                              None)
    assert OptionalKernelNotice().filter(other) is True  # anything else passes
    with caplog.at_level(logging.WARNING, logger="medgpt.modeling.load"):
        show_held_notices()
    assert "gemm_4bit_forward" in caplog.text and not OptionalKernelNotice.held
