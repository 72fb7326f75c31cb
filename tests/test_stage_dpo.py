"""stage=dpo and its variants (ipo, simpo via CPOTrainer): train from the MedicalGPT pairs, reload final/,
learn an obvious preference, reference model choice, clear errors before any model loads."""
import logging

import pytest

from conftest import SAMPLES, compose, train_in_process
from alignment_helpers import error_before_model_load, write_obvious_pairs

MEDICAL_PAIRS = [f"data.train_files=[{SAMPLES / 'dpo_zh_500.jsonl'}]", "data.max_samples=12", "data.eval_split=0",
                 "stage.args.max_steps=2", "stage.args.max_length=256", "stage.args.per_device_train_batch_size=2"]


def last_logged(run_dir, key):
    import json

    rows = json.loads((run_dir / "history.json").read_text())["log_history"]
    return [r[key] for r in rows if key in r][-1]


@pytest.mark.samples
def test_dpo_trains_on_medicalgpt_pairs_final_reloads(tmp_path, caplog):
    from medgpt.modeling.load import load_for_inference

    with caplog.at_level(logging.INFO, logger="medgpt"):
        run_dir, metrics = train_in_process(tmp_path, "stage=dpo", *MEDICAL_PAIRS)
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert "reference model: a frozen copy" in caplog.text
    model, tokenizer, info = load_for_inference(str(run_dir))
    assert info["stage"] == "dpo" and model.config.model_type == "qwen2"


def test_dpo_reward_margin_rises_on_obvious_pairs(tmp_path):
    data = write_obvious_pairs(tmp_path / "pairs.jsonl", 32)
    run_dir, metrics = train_in_process(tmp_path, "stage=dpo", f"data.train_files=[{data}]", "data.eval_split=0",
                                        "stage.args.max_steps=8", "stage.args.learning_rate=1e-3",
                                        "stage.args.warmup_steps=0", "stage.args.logging_steps=1", "seed=0")
    assert last_logged(run_dir, "rewards/margins") > 0.1  # chosen's implicit reward above rejected's
    assert last_logged(run_dir, "rewards/accuracies") > 0.5  # chance is 0.5
    assert metrics["final_train_loss"] < metrics["first_train_loss"]


@pytest.mark.samples
def test_dpo_with_lora_uses_the_adapter_disabled_policy_as_reference(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medgpt"):
        run_dir, metrics = train_in_process(tmp_path, "stage=dpo", "hardware=lora", *MEDICAL_PAIRS)
    assert "LoRA adapter disabled" in caplog.text
    assert (run_dir / "final" / "adapter_config.json").exists()


@pytest.mark.samples
@pytest.mark.parametrize("stage", ["ipo", "simpo", "orpo"])
def test_variants_train_on_medicalgpt_pairs(tmp_path, stage):
    from medgpt.modeling.load import load_for_inference

    run_dir, metrics = train_in_process(tmp_path, f"stage={stage}", *MEDICAL_PAIRS)
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert load_for_inference(str(run_dir))[2]["stage"] == stage


def test_variant_configs():
    assert compose("stage=ipo").stage.args.loss_type == "ipo"
    assert compose("stage=dpo", "stage.args.loss_type=ipo").stage.args.loss_type == "ipo"
    simpo = compose("stage=simpo").stage.args
    assert simpo._target_ == "trl.experimental.cpo.CPOConfig" and simpo.loss_type == "simpo" and simpo.cpo_alpha == 0
    assert compose("stage=orpo").stage.args._target_ == "trl.experimental.orpo.ORPOConfig"


@pytest.mark.parametrize("override, message", [
    ("stage.args.loss_type=simpo", "use stage=simpo"),
    ("stage.args.loss_type=not_a_loss", "not a DPO loss in the installed TRL"),
    ("stage.reference=frozen", "stage.reference=frozen: use one of auto, copy, none"),
])
def test_dpo_config_errors_before_model_load(tmp_path, monkeypatch, override, message):
    assert message in error_before_model_load(monkeypatch, tmp_path, "stage=dpo", override)


@pytest.mark.samples
def test_sft_data_to_dpo_fails_naming_accepted_formats(tmp_path, monkeypatch):
    message = error_before_model_load(monkeypatch, tmp_path, "stage=dpo",
                                      f"data.train_files=[{SAMPLES / 'medical_sft_1K_format.jsonl'}]")
    assert "format 'sharegpt'" in message
    assert "It accepts: sharegpt_preference, trl_preference, qa_preference" in message


@pytest.mark.parametrize("overrides", [
    *[[f"stage={s}"] for s in ("rm", "dpo", "ipo", "simpo", "orpo", "kto", "ppo", "grpo")],  # + data/<stage>_demo
    ["stage=dpo", "data=medical_dpo"], ["stage=grpo", "data=medical_grpo"], ["stage=dpo", "data=preference_demo"],
])
def test_alignment_configs_compose(overrides):
    from medgpt.config import check_trainer_args, demo_file, sample_file

    cfg = compose(*overrides)
    check_trainer_args(cfg)  # every stage.args key is a field of its TRL config class
    files = list(cfg.data.train_files)
    assert files and all(f.startswith((demo_file(""), sample_file(""))) for f in files)
