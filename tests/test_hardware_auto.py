"""hardware=auto (issue 23 item 4): the planner picks, for a model and a machine, the most-trained method that fits
(hardware.auto.methods in order), then its fastest setting (ZeRO/FSDP, gradient checkpointing, micro batch x
accumulation keeping the global batch); the decision and every rejected candidate land in the run folder and in
`medgpt estimate ... hardware=auto`. Fake machines come from hardware.auto.gpus / memory_gb.

    python -m pytest -q tests/test_hardware_auto.py
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import compose, train_in_process
from medgpt.config import resolve
from medgpt.errors import UserError
from medgpt.modeling import estimate
from medgpt.modeling.hardware import device_info
from medgpt.runs import HARDWARE_PLAN

# A 70B shape (Llama-2-70B's published config.json) under a test-only name: the shape table is not this test's.
SHAPE_70B = dict(model_type="llama", vocab_size=32000, hidden_size=8192, num_hidden_layers=80,
                 intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)
DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

# (model, gpus, memory GB) -> (method, sharding, gradient checkpointing, micro batch, accumulation); global batch:
# the sft stage's 4 per device x 1 x GPUs; max_length 2048
EXPECTED = {
    ("llama-7b", 0, 64): ("lora", "none", True, 4, 1),  # full fp32 needs 132 GB; LoRA fp32 45.9 GB
    ("llama-7b", 1, 24): ("lora", "none", True, 2, 2),  # full needs 67.5 GB; LoRA bf16 21.5 GB at batch 2
    ("llama-7b", 1, 80): ("full", "none", True, 2, 2),  # full bf16 69.3 GB with checkpointing
    ("llama-7b", 8, 80): ("full", "zero1", False, 2, 2) if DEEPSPEED else ("full", "fsdp_shard_grad_op", False, 2, 2),
    ("test-70b", 0, 64): ("qlora4", "none", True, 1, 4),
    ("test-70b", 1, 80): ("qlora4", "none", True, 4, 1),  # LoRA's 16-bit base alone is 138 GB
    ("test-70b", 8, 80): ("lora", "fsdp_full_shard", True, 4, 1),  # full: 171 GB per GPU even with ZeRO-3
}


@pytest.fixture(autouse=True)
def shape_70b(monkeypatch):
    monkeypatch.setitem(estimate.SHAPES, "test-70b", SHAPE_70B)


def plan_for(model: str, gpus: int, memory: float, *extra: str):
    cfg = compose("hardware=auto", f"model.name={model}", "model.max_length=2048", f"hardware.auto.gpus={gpus}",
                  f"hardware.auto.memory_gb={memory}", "hardware.auto.ram_gb=512", *extra)
    settings = resolve(cfg, device_info(), planner=estimate.plan)
    return cfg, settings


@pytest.mark.parametrize("machine", list(EXPECTED), ids=lambda m: f"{m[0]}-{m[1]}x{m[2]}GB")
def test_auto_picks_the_expected_setting_on_fake_machines(machine):
    model, gpus, memory = machine
    cfg, settings = plan_for(model, gpus, memory)
    record, chosen = settings.plan, settings.plan["chosen"]
    method, sharding, ckpt, batch, accumulation = EXPECTED[machine]
    assert (chosen["method"], chosen["sharding"], chosen["gradient_checkpointing"],
            chosen["per_device_train_batch_size"], chosen["gradient_accumulation_steps"]) == EXPECTED[machine], \
        estimate.plan_report(record)
    usable = memory * 0.9
    assert chosen["memory_gb"] <= usable
    # the global batch is kept: micro batch x accumulation x GPUs = 4 x 1 x GPUs as configured
    assert batch * accumulation * max(gpus, 1) == record["global_batch_size"] == 4 * max(gpus, 1)
    # every earlier method was rejected for size (or refused); every fitting setting of the chosen one is slower
    order = ["full", "lora", "qlora4"]  # conf/hardware/auto.yaml's hardware.auto.methods
    assert [r["verdict"] for r in record["candidates"]].count("chosen") == 1
    for row in record["candidates"]:
        if row["method"] != method:
            assert row["cost"] is None and ("too large" in row["verdict"] or "refused" in row["verdict"]), row
        elif row["verdict"] != "chosen" and row["cost"] is not None:
            assert row["cost"] >= chosen["cost"] and row["verdict"].startswith("fits, slower"), row
    assert not [r for r in record["candidates"] if order.index(r["method"]) > order.index(method)]
    # the run's settings and config are the chosen ones
    assert cfg.hardware.name == f"auto-{method}" and cfg.hardware.auto is None
    assert settings.gradient_checkpointing is ckpt and settings.per_device_train_batch_size == batch
    assert cfg.stage.args.gradient_accumulation_steps == accumulation
    assert (cfg.hardware.deepspeed is not None) == sharding.startswith("zero")
    assert (cfg.hardware.fsdp is not None) == sharding.startswith("fsdp")
    assert cfg.hardware.quantization == ("4bit" if method == "qlora4" else None)


def test_auto_says_when_nothing_fits():
    with pytest.raises(UserError, match=r"no candidate fits 1 x 24 GB .*qlora4, checkpointing\) needs 5\d\.\d GB"):
        plan_for("test-70b", 1, 24)


def test_auto_quantized_candidates_skip_zero3_with_the_reason():
    _, settings = plan_for("test-70b", 8, 24, "hardware.auto.methods=[qlora4]")
    rows = {r["sharding"]: r for r in settings.plan["candidates"] if not r["gradient_checkpointing"]}
    if DEEPSPEED:
        assert rows["zero3"]["verdict"].endswith("refused") and "ZeRO-3" in rows["zero3"]["verdict"]


def test_auto_respects_an_explicit_checkpointing_choice_and_refuses_a_given_engine():
    _, settings = plan_for("llama-7b", 1, 80, "stage.args.gradient_checkpointing=false")
    assert {r["gradient_checkpointing"] for r in settings.plan["candidates"]} == {False}
    assert settings.plan["chosen"]["method"] == "lora"  # full without checkpointing needs 77.9 GB > 72 GB
    with pytest.raises(UserError, match="chooses ZeRO or FSDP itself"):
        plan_for("llama-7b", 1, 80, "hardware/deepspeed=zero2")
    cfg = compose("hardware=auto", "hardware.auto.gpus=8")
    if not device_info()["gpus"]:
        with pytest.raises(UserError, match="give their memory too"):
            resolve(cfg, device_info(), planner=estimate.plan)
    with pytest.raises(UserError, match="planned by training and `medgpt estimate`"):
        resolve(compose("hardware=auto"), device_info())


def test_auto_refuses_a_launch_of_another_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="plans for 8 GPU.*WORLD_SIZE=4 .*hardware.auto.gpus=4"):
        plan_for("llama-7b", 8, 80)
    _, settings = plan_for("llama-7b", 4, 80)
    assert settings.plan["global_batch_size"] == 16


def test_estimate_command_shows_the_plan(capsys):
    assert estimate.main(["hardware=auto", "model.name=llama-7b", "model.max_length=2048", "hardware.auto.gpus=8",
                          "hardware.auto.memory_gb=80"]) == 0
    out = capsys.readouterr().out
    _, settings = plan_for("llama-7b", 8, 80)
    assert estimate.plan_report(settings.plan) in out  # the same table training prints
    assert "chosen: full" in out and "total per GPU" in out


def test_training_with_auto_writes_the_plan_into_the_run_folder(tmp_path, capsys):
    run_dir, metrics = train_in_process(tmp_path, "hardware=auto", "hardware.auto.gpus=0", "hardware.auto.memory_gb=16",
                                        "stage.args.max_steps=1", "data.eval_split=0", "data.max_samples=8")
    assert metrics["status"] == "completed" and metrics["hardware"] == "auto-full"
    record = json.loads((run_dir / HARDWARE_PLAN).read_text())
    assert record["chosen"]["label"] == "full, no checkpointing, micro batch 4 x accumulation 1"
    assert record["machine"]["gpus"] == 0 and record["candidates"][0]["verdict"] == "chosen"
    assert "hardware=auto for tiny" in capsys.readouterr().out
    assert "name: auto-full" in (run_dir / "config.yaml").read_text()  # the config records what ran


def test_data_inspect_plans_auto_as_the_run_would():
    from medgpt.tools.inspect import compose as inspect_compose, inspect_data

    planned = inspect_data(inspect_compose(["hardware=auto", "hardware.auto.gpus=1", "hardware.auto.memory_gb=24"]))
    named = inspect_data(inspect_compose(["hardware=lora"]))
    assert planned["train_records"] == named["train_records"] > 0 and planned["tokens"] == named["tokens"]
