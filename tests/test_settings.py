"""One resolver: medgpt.config.resolve derives each setting that several config nodes can give (max length, seeds,
precision, LoRA targets, gradient checkpointing, tokens per batch, template) once, and every consumer reads that
record. An explicit stage.args.max_length reaches the trainer, data preparation and its cache key, data inspect, the
memory estimate, RoPE `factor: auto` and evaluation; the precedence of every other setting is pinned here."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import types

import pytest

from conftest import DEMO, compose, read_jsonl, train_in_process
from medgpt.config import GPU_DEVICE, RunSettings, resolve
from medgpt.errors import UserError

N = 77  # stage.args.max_length here: unlike every default (tiny 512, trainers 1024, schema 2048, tiny context 4096)
CONTEXT = 64  # the tiny model's trained context in the run below, so that N needs RoPE scaling: auto = 77 / 64
CPU = {"cuda": False, "bf16": False}
GPU_FP16 = {"cuda": True, "bf16": False}
LONG_TEXT = " ".join(["Influenza commonly causes fever, cough, sore throat and muscle aches."] * 12)


def cpu(*overrides: str) -> RunSettings:
    return resolve(compose(*overrides), CPU)


# ---------------------------------------------------------------- max_length reaches every consumer

def test_stage_args_max_length_reaches_every_consumer_of_a_run(tmp_path, monkeypatch):
    """One real training run (SFT, RoPE factor auto, evaluation after training) with stage.args.max_length=N."""
    from medgpt.stages import sft

    seen = {}
    real_build = sft.build_trainer

    def spy_build(**kwargs):  # the run's own trainer, as medgpt.training.run builds it
        seen["trainer"] = real_build(**kwargs)
        return seen["trainer"]

    monkeypatch.setattr(sft, "build_trainer", spy_build)
    text_file = tmp_path / "long_text.jsonl"
    text_file.write_text(json.dumps({"text": LONG_TEXT}) + "\n", encoding="utf-8")
    run_dir, metrics = train_in_process(
        tmp_path, "stage=sft", f"stage.args.max_length={N}", f"model.tiny.max_position_embeddings={CONTEXT}",
        "model.rope_scaling={type: linear, factor: auto}", "data.eval_split=0", "stage.args.max_steps=2",
        "eval_after_train=true", f"eval.files=[{text_file}]")
    assert metrics["status"] == "completed"

    trainer = seen["trainer"]
    assert trainer.args.max_length == N  # trainer args
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert max(lengths) <= N and metrics.get("truncated", 0) > 0  # data preparation cut the long chats at N
    budget = trainer.args.per_device_train_batch_size * N  # tokens per batch: batch x N
    assert all(len(batch) * max(lengths[i] for i in batch) <= budget or len(batch) == 1
               for batch in trainer.batch_plan.batches)

    config = json.loads((run_dir / "final" / "config.json").read_text())  # RoPE factor auto = N / trained context
    factor = math.ceil(N / CONTEXT * 100) / 100
    assert config["rope_parameters"]["factor"] == factor and config["max_position_embeddings"] == int(CONTEXT * factor)

    [scored] = read_jsonl(run_dir / "predictions" / "long_text.jsonl")  # evaluation keeps N tokens of the text
    assert scored["tokens"] == N - 1


def test_cache_key_follows_the_resolved_max_length(tiny_tokenizer):
    from medgpt.data.cache import cache_key
    from medgpt.data.loading import load_split
    from medgpt.stages import sft

    rows = load_split([DEMO / "sft_demo.jsonl"], accepted=["sharegpt"], max_samples=8).rows

    def key(*overrides):
        cfg = compose("stage=sft", *overrides)
        return cache_key(sft, rows, tiny_tokenizer, cfg, resolve(cfg, CPU))

    assert key(f"stage.args.max_length={N}") != key(f"stage.args.max_length={N + 1}")
    assert key(f"stage.args.max_length={N}") == key(f"stage.args.max_length={N}", "data.max_length=300")
    assert key("data.max_length=300") == key("model.max_length=300")  # the value counts, not where it came from


def test_inspect_reports_the_max_length_the_run_trains_at():
    from medgpt.tools.inspect import compose as inspect_compose, inspect_data, report

    stats = inspect_data(inspect_compose(["stage=sft", f"stage.args.max_length={N}", "data.max_samples=20"]))
    assert stats["max_length"] == N and stats["max_length_from"] == "stage.args.max_length"
    assert f"longer than max_length={N} (stage.args.max_length)" in report(stats)
    over = stats["over_max_length"]
    assert over > 0 and over == inspect_data(inspect_compose(["stage=sft", f"data.max_length={N}",
                                                              "data.max_samples=20"]))["over_max_length"]
    # stage=rm trains at its stage.args.max_length (1024), which inspect now reports too (it said 512 before)
    rm = inspect_compose(["stage=rm", "data.max_samples=4"])
    assert inspect_data(rm)["max_length"] == 1024 == resolve(rm, CPU).max_length


def test_trainer_args_of_each_pair_stage_carry_the_resolved_max_length(tmp_path):
    from medgpt.config import check_trainer_args
    from medgpt.training.run import trainer_args

    for stage, expected in (("rm", 1024), ("dpo", 1024), ("kto", 1024), ("orpo", 1024), ("simpo", 1024)):
        for overrides, want in (([], expected), ([f"stage.args.max_length={N}"], N),
                                (["~stage.args.max_length", f"data.max_length={N}"], N)):
            cfg = compose(f"stage={stage}", *overrides)
            settings = resolve(cfg, CPU)
            args = trainer_args(cfg, settings, check_trainer_args(cfg), tmp_path / stage, {})
            assert args.max_length == settings.max_length == want, (stage, overrides)


def test_pair_stages_prepare_at_the_resolved_max_length(tiny_tokenizer):
    from medgpt.data.loading import load_split
    from medgpt.stages import dpo, rm

    rows = load_split([DEMO / "preference_demo.jsonl"], accepted=["sharegpt_preference", "trl_preference",
                                                                  "qa_preference", "hh_preference"]).rows
    longest = max(max(rm.pair_lengths(r, tiny_tokenizer)) for r in rows)
    cfg = compose("stage=rm", f"stage.args.max_length={longest - 1}")
    _, counts = rm.prepare(rows, tiny_tokenizer, cfg, resolve(cfg, CPU))
    assert counts["dropped_overlong"] > 0  # the pairs over the resolved length are counted
    from medgpt.data.cache import prepare_split  # a train split left empty stops the run (medgpt.data.cache)

    cfg = compose("stage=dpo", "stage.args.max_length=4", "data.cache=false")
    with pytest.raises(UserError, match="the prompt alone fills max_length; stage.args.max_length=4.*raise "
                                        "stage.args.max_length"):
        prepare_split("train", dpo, rows, tiny_tokenizer, cfg, resolve(cfg, CPU))
    cfg = compose("stage=dpo", "~stage.args.max_length", "data.max_length=4", "data.cache=false")
    with pytest.raises(UserError, match="raise data.max_length"):  # the message names the key that set it
        prepare_split("train", dpo, rows, tiny_tokenizer, cfg, resolve(cfg, CPU))


def test_estimate_uses_the_resolved_max_length_and_batch():
    from medgpt.modeling import estimate

    cfg = compose("model.name=llama-7b", "hardware=lora", f"stage.args.max_length={N}",
                  "stage.args.per_device_train_batch_size=3")
    assert f"sequence {N}, micro batch 3" in estimate.estimate_run(cfg).notes[0]
    assert "sequence 512" in estimate.estimate_run(compose("model.name=llama-7b", "hardware=lora")).notes[0]


def test_warning_before_training_estimates_the_run_settings(monkeypatch):
    import torch

    from medgpt.modeling import estimate

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 80e9}))
    cfg = compose("model.name=llama-7b", "hardware=lora", f"stage.args.max_length={N}")
    est = estimate.warn_if_too_large(cfg, resolve(cfg, GPU_DEVICE))
    assert f"sequence {N}, micro batch 4" in est.notes[0] and "bf16" in est.notes[0]
    assert estimate.warn_if_too_large(cfg, resolve(cfg, CPU)) is None  # no GPU: nothing to warn about


def test_rope_factor_auto_reads_the_run_max_length():
    from medgpt.modeling.load import load_model

    cfg = compose("model.rope_scaling={type: linear, factor: auto}", "stage.args.max_length=6000")
    model = load_model(cfg.model, cfg.hardware, resolve(cfg, CPU))  # the tiny model's trained context: 4096
    assert model.config.rope_parameters["factor"] == math.ceil(6000 / 4096 * 100) / 100
    cfg = compose("model.rope_scaling={type: linear, factor: auto}", "model.max_length=6000", "stage=dpo")
    model = load_model(cfg.model, cfg.hardware, resolve(cfg, CPU))  # DPO trains at stage.args.max_length=1024
    assert model.config.rope_parameters.get("rope_type", "default") == "default"  # fits: no scaling


def test_lm_eval_harness_gets_the_run_max_length_and_seed(monkeypatch, tmp_path):
    from medgpt.evaluation.harness import run_lm_eval

    seen = {}

    class FakeHFLM:
        def __init__(self, **kwargs):
            seen["lm"] = kwargs

    def simple_evaluate(**kwargs):
        seen["evaluate"] = kwargs
        return {"results": {"medgpt_mcq_demo": {"acc,none": 0.5}}}

    manager = types.SimpleNamespace(all_tasks=["medgpt_mcq_demo"], task_index={})
    fake = {"lm_eval": types.SimpleNamespace(simple_evaluate=simple_evaluate),
            "lm_eval.models": types.ModuleType("lm_eval.models"),
            "lm_eval.models.huggingface": types.SimpleNamespace(HFLM=FakeHFLM),
            "lm_eval.tasks": types.SimpleNamespace(TaskManager=lambda **kw: manager)}
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    cfg = compose("stage=eval", f"data.max_length={N}", "seed=5", "eval.lm_eval_tasks=[medgpt_mcq_demo]")
    metrics = run_lm_eval(cfg, resolve(cfg, CPU), model=None, tokenizer=None, run_dir=tmp_path)
    assert seen["lm"]["max_length"] == N and seen["evaluate"]["random_seed"] == 5
    assert metrics == {"lm_eval/medgpt_mcq_demo/acc": 0.5}


def test_eval_stage_reads_data_then_model_max_length():
    assert cpu("stage=eval").max_length == 512
    assert cpu("stage=eval", f"data.max_length={N}").max_length == N
    assert cpu("stage=eval").per_device_train_batch_size is None and cpu("stage=eval").tokens_per_batch is None


# ---------------------------------------------------------------- precedence of each setting

def test_max_length_precedence():
    assert (cpu().max_length, cpu().source("max_length")) == (512, "model.max_length")
    assert (cpu("data.max_length=300").max_length, cpu("data.max_length=300").source("max_length")) == \
        (300, "data.max_length")
    both = cpu("data.max_length=300", f"stage.args.max_length={N}")
    assert (both.max_length, both.source("max_length")) == (N, "stage.args.max_length")
    assert cpu("stage=rm", "data.max_length=300").max_length == 1024  # the stage file's stage.args.max_length
    assert cpu("stage=rm", "~stage.args.max_length").max_length == 512
    assert cpu("stage=rm", "stage.args.max_length=null", "data.max_length=300").max_length == 300  # null: not given
    with pytest.raises(UserError, match=r"stage.args.max_length=0: give a positive number"):
        cpu("stage.args.max_length=0")


def test_seed_precedence(tmp_path):
    from medgpt.config import check_trainer_args
    from medgpt.training.run import trainer_args

    assert (cpu("seed=7").seed, cpu("seed=7").data_seed) == (7, 7)
    explicit = cpu("seed=7", "stage.args.seed=0")  # 0 is a seed, not "unset"
    assert (explicit.seed, explicit.data_seed, explicit.source("data_seed")) == (0, 0, "stage.args.seed")
    both = cpu("seed=7", "stage.args.seed=11", "stage.args.data_seed=13")
    assert (both.seed, both.data_seed) == (11, 13)
    cfg = compose("seed=7", "stage.args.data_seed=13")
    args = trainer_args(cfg, resolve(cfg, CPU), check_trainer_args(cfg), tmp_path, {})
    assert (args.seed, args.data_seed) == (7, 13)


def test_the_eval_split_follows_data_seed(tiny_tokenizer):
    from medgpt.stages import sft
    from medgpt.training.run import prepare_datasets

    def held_out(*overrides):
        cfg = compose("data.eval_split=0.2", "data.cache=false", *overrides)
        return prepare_datasets(cfg, sft, tiny_tokenizer, resolve(cfg, CPU))[1]["input_ids"]

    assert held_out("stage.args.data_seed=1") == held_out("seed=1")
    assert held_out("stage.args.data_seed=1") != held_out("stage.args.data_seed=2")


def test_lora_target_precedence():
    from medgpt.modeling import estimate
    from medgpt.modeling.load import load_model

    assert cpu("hardware=lora").lora_target_modules == "all-linear"  # the tiny model's own list
    family = cpu("hardware=lora", "model=qwen2.5-7b")
    assert family.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    own = cpu("hardware=lora", "model=qwen2.5-7b", "hardware.lora_target_modules=[q_proj,v_proj]")
    assert (own.lora_target_modules, own.source("lora_target_modules")) == (("q_proj", "v_proj"),
                                                                            "hardware.lora_target_modules")
    with pytest.raises(UserError, match=r"hardware.lora_target_modules=\[\]"):
        cpu("hardware=lora", "hardware.lora_target_modules=[]")

    cfg = compose("hardware=lora", "hardware.lora_target_modules=[q_proj]")
    model = load_model(cfg.model, cfg.hardware, resolve(cfg, CPU))
    assert set(model.peft_config["default"].target_modules) == {"q_proj"}
    q_only = estimate.estimate_run(cfg).terms["gradients"]  # the estimate counts the same adapters
    assert q_only < estimate.estimate_run(compose("hardware=lora")).terms["gradients"]


def test_gradient_checkpointing_precedence(tmp_path):
    from medgpt.config import check_trainer_args
    from medgpt.modeling import estimate
    from medgpt.training.run import trainer_args

    assert cpu("hardware=lora").gradient_checkpointing is True
    assert cpu("hardware=cpu").gradient_checkpointing is False
    for hw, explicit, want in (("lora", "false", False), ("cpu", "true", True)):
        cfg = compose(f"hardware={hw}", f"stage.args.gradient_checkpointing={explicit}")
        settings = resolve(cfg, CPU)
        assert settings.gradient_checkpointing is want
        assert trainer_args(cfg, settings, check_trainer_args(cfg), tmp_path, {}).gradient_checkpointing is want
        notes = " ".join(estimate.estimate_run(cfg).notes)
        assert ("gradient checkpointing" in notes) is want


def test_precision_precedence(tmp_path):
    import torch

    from medgpt.config import check_trainer_args
    from medgpt.modeling import estimate
    from medgpt.modeling.load import load_model
    from medgpt.training.run import trainer_args

    assert cpu("hardware=lora").precision == "fp32"
    assert resolve(compose("hardware=lora"), GPU_DEVICE).precision == "bf16"
    assert resolve(compose("hardware=lora"), GPU_FP16).precision == "fp16"
    assert resolve(compose("hardware=cpu"), GPU_DEVICE).precision == "fp32"
    explicit = resolve(compose("hardware=cpu", "stage.args.bf16=true"), GPU_DEVICE)
    assert (explicit.precision, explicit.source("precision")) == ("bf16", "stage.args.bf16")
    assert resolve(compose("hardware=lora", "stage.args.bf16=false"), GPU_DEVICE).precision == "fp32"
    assert resolve(compose("hardware=lora", "stage.args.fp16=false"), GPU_DEVICE).precision == "bf16"
    forced_cpu = resolve(compose("hardware=lora", "stage.args.use_cpu=true"), GPU_DEVICE)
    assert (forced_cpu.cuda, forced_cpu.precision) == (False, "fp32")
    with pytest.raises(UserError, match="stage.args.fp16=true needs a CUDA GPU"):
        cpu("stage.args.fp16=true")
    with pytest.raises(UserError, match="both true"):
        resolve(compose("stage.args.bf16=true", "stage.args.fp16=true"), GPU_DEVICE)
    with pytest.raises(UserError, match="hardware.args.bf16: .*set stage.args.bf16"):
        cpu("hardware.args.bf16=true")

    cfg = compose("hardware=lora")
    args = trainer_args(cfg, cpu("hardware=lora"), check_trainer_args(cfg), tmp_path, {})
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)
    assert "fp32" in estimate.estimate_run(compose("hardware=cpu")).notes[0]
    assert "bf16" in estimate.estimate_run(compose("hardware=lora")).notes[0]  # estimated for a bf16 GPU
    bf16 = dataclasses.replace(cpu(), precision="bf16")  # load_model takes the record's precision
    assert load_model(cfg.model, compose().hardware, bf16).dtype == torch.bfloat16


def test_tokens_per_batch_precedence(tmp_path):
    assert cpu(f"stage.args.max_length={N}").tokens_per_batch == 4 * N
    assert cpu("stage.args.per_device_train_batch_size=2").tokens_per_batch == 2 * 512
    assert cpu("~stage.args.per_device_train_batch_size").tokens_per_batch == 8 * 512  # SFTConfig's default batch
    given = cpu(f"stage.args.max_length={N}", "stage.tokens_per_batch=1000")
    assert (given.tokens_per_batch, given.source("tokens_per_batch")) == (1000, "stage.tokens_per_batch")
    with pytest.raises(UserError, match="hardware.args.per_device_train_batch_size: .*stage.args"):
        cpu("hardware.args.per_device_train_batch_size=2")  # one place for the batch size: stage.args


def test_template_and_summary():
    settings = cpu("model.template=chatml")
    assert settings.template == "chatml"
    summary = settings.summary()
    assert "max_length=512 (model.max_length)" in summary and "template=chatml (model.template)" in summary

