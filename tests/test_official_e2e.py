"""Real tokenizers end to end: a tiny random model (2 layers, hidden 64) around each official tokenizer, with its full
vocabulary (medgpt.modeling.official), trains through `model=<config> model.path=<folder>` like a real checkpoint,
saves final/ with the family's template, and chats from it.

    pytest tests/test_official_e2e.py
"""
from __future__ import annotations

import json

import pytest

from conftest import official, train_in_process
from medgpt.modeling.templates import END_OF_TURN

# official tokenizer -> the model config of its family
FAMILY_CONFIG = {"qwen3": "qwen3-0.6b", "llama3": "llama3-8b", "llama3_1": "llama3.1-8b", "gemma3": "gemma3-1b",
                 "deepseek_v3": "deepseek-v3", "llama2": "llama2-7b"}
TEMPLATE = {"qwen3": "qwen3", "llama3": "llama3", "llama3_1": "llama3", "gemma3": "gemma", "deepseek_v3": "deepseek3",
            "llama2": "llama2"}
SHORT = ("data.max_samples=4", "data.eval_split=0", "stage.args.max_steps=1", "data.max_length=128",
         "stage.args.per_device_train_batch_size=2", "stage.args.gradient_accumulation_steps=1",
         "stage.args.save_strategy=no", "stage.args.report_to=[]")


def train(tmp_path, name, *overrides):
    folder = official(name, model=True)
    return train_in_process(tmp_path, f"model={FAMILY_CONFIG[name]}", f"model.path={folder}", *SHORT, *overrides)


def chat_reply(run_dir, question="头痛怎么办？"):
    """One greedy reply from final/, as `medgpt chat` loads it; returns (reply, tokenizer, info, prompt ids)."""
    from medgpt.modeling.generate import prompt_ids
    from medgpt.modeling.load import load_for_inference

    import torch

    model, tokenizer, info = load_for_inference(str(run_dir))
    ids = prompt_ids(tokenizer, [{"role": "user", "content": question}])
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    return tokenizer.decode(out[0, len(ids):]), tokenizer, info, ids


# qwen3 trains with thinking off (model.chat_template_kwargs), which final/ must carry to chat and serving
KWARGS = {"qwen3": {"enable_thinking": False}}


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIG))
def test_sft_on_the_real_tokenizer_saves_final_and_chats(tmp_path, name):
    kwargs = KWARGS.get(name, {})
    extra = [f"model.chat_template_kwargs={{{','.join(f'{k}:{str(v).lower()}' for k, v in kwargs.items())}}}"]
    run_dir, metrics = train(tmp_path, name, "stage=sft", *(extra if kwargs else []))
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    reply, tokenizer, info, ids = chat_reply(run_dir)
    template = info["template"]
    assert template == TEMPLATE[name]
    assert len(tokenizer) == json.loads((official(name, model=True) / "official.json").read_text())["vocab_size"]
    assert tokenizer.convert_tokens_to_ids(END_OF_TURN[template]) != tokenizer.unk_token_id
    assert "头痛怎么办" in tokenizer.decode(ids) and isinstance(reply, str)
    assert info["chat_template_kwargs"] == kwargs  # written into final/medgpt.json for chat and serving
    if name == "qwen3":  # rendered with it, the prompt is Qwen3's no-thinking generation prompt
        text = tokenizer.apply_chat_template([{"role": "user", "content": "头痛怎么办？"}], tokenize=False,
                                             add_generation_prompt=True, **info["chat_template_kwargs"])
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def saved_final(run_dir, name, stage):
    """final/ holds the weights, the full tokenizer and the run info (chat from final/ is proven by the SFT test)."""
    from medgpt import runs

    final = run_dir / runs.FINAL
    info = runs.run_info(str(final))
    assert info["stage"] == stage and info["template"] == TEMPLATE[name] and runs.holds_model(final)
    vocab = json.loads((official(name, model=True) / "official.json").read_text())["vocab_size"]
    assert json.loads((final / runs.MODEL_CONFIG).read_text())["vocab_size"] == vocab
    assert (final / "tokenizer.json").stat().st_size > 1_000_000  # the real vocabulary, not a stand-in


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIG))
def test_dpo_on_the_real_tokenizer(tmp_path, name):
    run_dir, metrics = train(tmp_path, name, "stage=dpo")
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    saved_final(run_dir, name, "dpo")


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIG))
def test_grpo_on_the_real_tokenizer(tmp_path, name):
    run_dir, metrics = train(tmp_path, name, "stage=grpo", "stage.args.num_generations=2",
                             "stage.args.max_completion_length=4")
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
    saved_final(run_dir, name, "grpo")

