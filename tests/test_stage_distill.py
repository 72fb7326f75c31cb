"""stage=distill (trl.DistillationTrainer): the student's divergence from the teacher falls on a toy task; the teacher
must share the student's tokenizer (checked before any model loads); LoRA and the sft,distill pipeline."""
import json

import pytest

from alignment_helpers import error_before_model_load
from conftest import DEMO, train_in_process

DISTILL_SMALL = ["stage.args.max_completion_length=16", "stage.args.per_device_train_batch_size=4",
                 "stage.args.logging_steps=1", "stage.args.lr_scheduler_type=constant", "seed=0"]


@pytest.fixture(scope="module")
def sharp_teacher(tmp_path_factory):
    """A run folder whose final/ holds the tiny model with 3x its embeddings (tied: 3x sharper next-token
    distributions), same tokenizer: a teacher the student can approach in a few steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medgpt.modeling.tiny import tiny_path

    run = tmp_path_factory.mktemp("teacher_run")
    model = AutoModelForCausalLM.from_pretrained(tiny_path())
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(3.0)
    model.save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(tiny_path()).save_pretrained(run / "final")
    return run  # stage.teacher=<run folder>: its final/ is loaded


def reverse_kl(student, teacher, contexts) -> float:
    """Mean KL(student || teacher) of the next-token distributions over the completion positions of fixed contexts."""
    import torch

    total, positions = 0.0, 0
    with torch.no_grad():
        for ids, prompt_length in contexts:
            log_s = torch.log_softmax(student(ids[None]).logits[0, prompt_length - 1:-1], -1)
            log_t = torch.log_softmax(teacher(ids[None]).logits[0, prompt_length - 1:-1], -1)
            total += (log_s.exp() * (log_s - log_t)).sum().item()
            positions += log_s.shape[0]
    return total / positions


def teacher_contexts(teacher, tokenizer, n_prompts=8):
    """Teacher-sampled completions (16 tokens, seeded) to the demo prompts: the fixed positions the divergence is
    measured at, before and after training."""
    import torch

    questions = [json.loads(line)["question"] for line in (DEMO / "grpo_demo.jsonl").read_text().splitlines()]
    torch.manual_seed(0)
    contexts = []
    for question in questions[:n_prompts]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_dict=True, return_tensors="pt")["input_ids"]
        for row in teacher.generate(ids, do_sample=True, max_new_tokens=16, num_return_sequences=2,
                                    pad_token_id=tokenizer.pad_token_id):
            contexts.append((row, ids.shape[1]))
    return contexts


def test_student_divergence_from_the_teacher_falls(tmp_path, sharp_teacher):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medgpt.modeling.tiny import tiny_path

    run_dir, metrics = train_in_process(tmp_path, "stage=distill", f"stage.teacher={sharp_teacher}",
                                        "stage.args.max_steps=12", "stage.args.learning_rate=2e-3", *DISTILL_SMALL)
    assert metrics["status"] == "completed" and metrics["global_step"] == 12
    teacher = AutoModelForCausalLM.from_pretrained(sharp_teacher / "final").eval()
    contexts = teacher_contexts(teacher, AutoTokenizer.from_pretrained(sharp_teacher / "final"))
    before = reverse_kl(AutoModelForCausalLM.from_pretrained(tiny_path()).eval(), teacher, contexts)
    after = reverse_kl(AutoModelForCausalLM.from_pretrained(run_dir / "final").eval(), teacher, contexts)
    print(f"distill: KL(student || teacher) {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before  # measured: 0.089 -> 0.056
    assert json.loads((run_dir / "final" / "medgpt.json").read_text())["stage"] == "distill"


def test_a_teacher_with_another_tokenizer_fails_before_any_model_loads(tmp_path, monkeypatch):
    from medgpt.modeling.tiny import tiny_path

    other = tiny_path(vocab_size=512)  # the same corpus, a smaller vocabulary: another tokenizer
    message = error_before_model_load(monkeypatch, tmp_path, "stage=distill", f"stage.teacher={other}")
    assert f"stage.teacher={other}" in message and "model.path=tiny" in message
    assert "do not share a tokenizer" in message


@pytest.mark.parametrize("overrides, expected", [
    ((), "stage=distill needs a teacher: stage.teacher="),
    (("stage.teacher=/no/such/teacher",), "no such folder"),
    (("stage.teacher=tiny", "stage.args.use_vllm=true"), "stage.args.use_vllm=true needs a CUDA GPU"),
])
def test_distill_config_errors_before_model_load(tmp_path, monkeypatch, overrides, expected):
    assert expected in error_before_model_load(monkeypatch, tmp_path, "stage=distill", *overrides)


def test_sft_then_distill_pipeline_with_lora(tmp_path, caplog):
    """LoRA throughout: the teacher is the pipeline's own SFT run (a LoRA adapter, merged onto its base when loaded);
    the student starts from the same run (merged) and trains a fresh adapter."""
    import logging

    from medgpt.tools.pipeline import run_pipeline

    sft_run = tmp_path / "chain" / "1-sft"  # known before the pipeline starts; read when distill prepares
    with caplog.at_level(logging.INFO, logger="medgpt"):
        results = run_pipeline(["sft", "distill"], [f"output_root={tmp_path}", "logger=none", "hardware=lora",
                                                    "stage.args.max_steps=2", f"distill:stage.teacher={sft_run}",
                                                    "distill:stage.args.max_completion_length=8",
                                                    "distill:stage.args.per_device_train_batch_size=2"],
                               root=tmp_path / "chain")
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert (sft_run / "final" / "adapter_config.json").exists()
    assert results[1]["model_path"] == str(sft_run / "final")
    assert f"teacher: {sft_run / 'final'}" in caplog.text
    assert f"adapter {sft_run / 'final'}: merged into its base" in caplog.text
    final = tmp_path / "chain" / "2-distill" / "final"
    assert (final / "adapter_config.json").exists()  # the student trained a fresh LoRA adapter
    assert "adapter_merge: true" in (tmp_path / "chain" / "2-distill" / "config.yaml").read_text()


def test_pipeline_without_a_teacher_fails_before_the_first_stage(tmp_path):
    from medgpt.errors import UserError
    from medgpt.tools.pipeline import run_pipeline

    with pytest.raises(UserError, match="distill needs a teacher: add distill:stage.teacher="):
        run_pipeline(["sft", "distill"], [f"output_root={tmp_path}", "logger=none"], root=tmp_path / "chain")
    assert not (tmp_path / "chain").exists()
