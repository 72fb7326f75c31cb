"""The real entrypoint end to end, and SFT / PT / LoRA training on the tiny model."""
import json
import statistics

import pytest

from conftest import SAMPLES, run_cli, train_in_process
from medgpt.modeling.load import load_for_inference


def _generate(path, prompt="What are the symptoms of influenza?"):
    model, tokenizer, info = load_for_inference(str(path))
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:], tokenizer, info


def test_python_train_py_end_to_end(tmp_path):
    secret = "wandb-fake-secret-0123456789abcdef"
    result = run_cli(f"output_root={tmp_path}", "stage.args.max_steps=3",
                     env={"WANDB_API_KEY": secret, "HF_TOKEN": "hf_fake_secret_token_xyz"})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "sft-tiny-cpu").iterdir()
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "config.yaml", "metrics.json", "train.log",
                 "history.json", "environment.json", "final/model.safetensors", "final/tokenizer.json",
                 "final/generation_config.json", "final/chat_template.jinja"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 3 and metrics["tokens_seen"] > 0
    assert metrics["eval_loss"] > 0 and metrics["train_runtime"] > 0
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B runs offline by default"
    new_tokens, tokenizer, info = _generate(run_dir / "final")
    assert 0 < len(new_tokens) <= 8 and info["template"] == "qwen"
    for path in run_dir.rglob("*"):  # secrets from the environment never land in the run folder
        if path.is_file():
            blob = path.read_bytes()
            assert secret.encode() not in blob and b"hf_fake_secret_token_xyz" not in blob, path


def test_user_error_prints_one_line_and_exits_nonzero(tmp_path):
    result = run_cli(f"output_root={tmp_path}", f"data.train_files=[{tmp_path}/missing.jsonl]", "logger=none")
    assert result.returncode == 2
    assert "error: data.train_files: no such file" in result.stderr and "Traceback" not in result.stderr
    (run_dir,) = (tmp_path / "runs" / "sft-tiny-cpu").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    assert not (run_dir / "final").exists()


def test_run_stamps_differ_so_runs_never_share_a_folder():
    from medgpt.runs import run_stamp

    import time

    a = run_stamp()
    time.sleep(0.002)
    b = run_stamp()
    assert a < b and len(a) == len("2026-11-26_05-40-48_714")


@pytest.mark.samples
def test_sft_on_medical_sample_lowers_the_loss(tmp_path):
    _, metrics = train_in_process(
        tmp_path, f"data.train_files=[{SAMPLES / 'medical_sft_1K_format.jsonl'}]", "data.max_samples=96",
        "data.eval_split=0", "data.max_length=256", "stage.args.max_steps=24", "stage.args.learning_rate=2e-3",
        "stage.args.logging_steps=1", "stage.args.lr_scheduler_type=constant")
    history = json.loads((tmp_path / "run" / "history.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 24
    assert statistics.mean(losses[-4:]) < statistics.mean(losses[:4]) - 0.5, losses


@pytest.mark.samples
def test_pt_on_article_sample_runs(tmp_path):
    run_dir, metrics = train_in_process(tmp_path, "stage=pt", "data=medical_pt", "data.block_size=64",
                                        "stage.args.max_steps=3")
    assert metrics["status"] == "completed" and metrics["global_step"] == 3
    lines = [line for line in (SAMPLES / "en_article_tail500.txt").read_text().splitlines() if line.strip()]
    assert metrics["train_records"] == len(lines) and metrics["tokens"] > 64 * 3
    assert (run_dir / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("hardware", ["lora", "qlora4"])
def test_adapter_runs_save_an_adapter_that_reloads_on_its_base(tmp_path, hardware):
    run_dir, metrics = train_in_process(tmp_path, f"hardware={hardware}", "stage.args.max_steps=2",
                                        "stage.args.learning_rate=1e-3")
    final = run_dir / "final"
    assert (final / "adapter_model.safetensors").exists() and not (final / "model.safetensors").exists()
    new_tokens, _, info = _generate(final)
    assert info["adapter"] is True and len(new_tokens) > 0
