"""Slow and remote-code tokenizers (issue 17.7): such tokenizers (chatglm, baichuan, internlm, qwen-7b, xverse,
orion: Python `PreTrainedTokenizer` subclasses) have no character offsets, so `apply_chat_template` cannot return an
assistant mask. medgpt renders the conversation once and tokenizes it span by span (medgpt.data.tokenize.
segment_labels); these tests prove that gives exactly the labels of the mask on fast tokenizers, and correct labels
on a slow one."""
from __future__ import annotations

import pytest

from conftest import compose, official
from medgpt.data.tokenize import IGNORE, batch_labels, chat_labels, segment_labels, tokenize_chats

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
           "<tool_response>", "</tool_response>"]
TOOLS = [{"type": "function", "function": {"name": "lookup_dose", "description": "Adult dose of a drug",
                                           "parameters": {"type": "object",
                                                          "properties": {"drug": {"type": "string"}}}}}]
BATTERY = [  # (messages, tools)
    ([{"role": "user", "content": "Is fever dangerous?"}, {"role": "assistant", "content": "Often not."}], None),
    ([{"role": "system", "content": "You are a careful doctor."}, {"role": "user", "content": "发烧怎么办？"},
      {"role": "assistant", "content": "多喝水，\n必要时就医。"}, {"role": "user", "content": "And aspirin?"},
      {"role": "assistant", "content": " Ask a doctor first."}], None),
    ([{"role": "user", "content": "Headache?"},
      {"role": "assistant", "content": "Rest.", "reasoning_content": "Common, usually benign."}], None),
    ([{"role": "user", "content": "Aspirin dose?"},
      {"role": "assistant", "content": "", "tool_calls": [
          {"type": "function", "function": {"name": "lookup_dose", "arguments": {"drug": "aspirin"}}}]},
      {"role": "tool", "content": "500 mg every 4 hours"},
      {"role": "assistant", "content": "Take 500 mg, four-hourly."}], TOOLS),
]


def slow_tokenizer_class():
    """A character-level tokenizer written the way remote-code tokenizers are: a Python PreTrainedTokenizer."""
    from transformers import PreTrainedTokenizer

    class CharTokenizer(PreTrainedTokenizer):
        def __init__(self, chars: str, **kwargs):
            self.chars = ["<unk>"] + sorted(set(chars))
            self.ids = {c: i for i, c in enumerate(self.chars)}
            super().__init__(unk_token="<unk>", **kwargs)

        @property
        def vocab_size(self):
            return len(self.chars)

        def get_vocab(self):
            return {**self.ids, **self.added_tokens_encoder}

        def _tokenize(self, text, **kwargs):
            return list(text)

        def _convert_token_to_id(self, token):
            return self.ids.get(token, 0)

        def _convert_id_to_token(self, index):
            return self.chars[index]

        def convert_tokens_to_string(self, tokens):
            return "".join(tokens)

    return CharTokenizer


@pytest.fixture(scope="module")
def slow_tokenizer():
    from medgpt.modeling.templates import load_template

    rendered = "".join(str(messages) + str(tools) for messages, tools in BATTERY) + load_template("qwen")
    tokenizer = slow_tokenizer_class()(rendered + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n")
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                  "additional_special_tokens": SPECIAL})
    tokenizer.chat_template = load_template("qwen")
    return tokenizer


def trained_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])


def test_slow_tokenizer_cannot_return_an_assistant_mask(slow_tokenizer):
    """The problem being solved: transformers' own mask needs the offsets only a fast tokenizer has."""
    assert not slow_tokenizer.is_fast
    with pytest.raises(Exception):
        slow_tokenizer.apply_chat_template(BATTERY[0][0], tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)


@pytest.mark.parametrize("case", range(len(BATTERY)))
def test_slow_tokenizer_labels_exactly_the_answers_and_their_end_of_turn(slow_tokenizer, tiny_tokenizer, case):
    """Same trained text as the fast tiny tokenizer's assistant mask under the same template: every answer (its
    reasoning and tool calls as the template renders them) and its <|im_end|>, nothing else."""
    from medgpt.modeling.templates import load_template

    messages, tools = BATTERY[case]
    ids, labels = chat_labels(slow_tokenizer, messages, tools)
    assert slow_tokenizer.decode(ids) == slow_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    tiny_tokenizer.chat_template = load_template("qwen")
    fast = trained_text(tiny_tokenizer, *chat_labels(tiny_tokenizer, messages, tools))
    trained = trained_text(slow_tokenizer, ids, labels)
    assert trained == fast and trained.count("<|im_end|>") == sum(m["role"] == "assistant" for m in messages)
    for message in messages:
        if message["role"] == "assistant":
            assert message["content"].strip() in trained
        elif message["role"] != "system":
            assert message["content"] not in trained


def official_or_tiny(name, tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir if name == "tiny" else official(name))


@pytest.mark.parametrize("tokenizer_name, template", [("tiny", "qwen"), ("tiny", "chatml"), ("qwen3", "qwen3"),
                                                      ("qwen3", "chatml"), ("llama3", "llama3")])
def test_span_by_span_labels_equal_the_fast_tokenizers_mask(tokenizer_name, template, tiny_dir):
    """On fast tokenizers (the tiny BPE and real vocabularies) the span-by-span method, and the batched path SFT
    preparation takes, give the same ids and labels as transformers' assistant mask, for every conversation."""
    from medgpt.modeling.templates import load_template

    tokenizer = official_or_tiny(tokenizer_name, tiny_dir)
    tokenizer.chat_template = load_template(template)
    for messages, tools in BATTERY:
        assert segment_labels(tokenizer, messages, tools) == chat_labels(tokenizer, messages, tools)
    assert batch_labels(tokenizer, BATTERY) == [chat_labels(tokenizer, m, t) for m, t in BATTERY]  # SFT's fast path


def test_sft_prepares_with_a_slow_tokenizer(slow_tokenizer):
    from medgpt.config import resolve
    from medgpt.stages import sft

    cfg = compose("stage=sft", "data.max_length=4096")
    rows = [{"messages": messages, **({"tools": tools} if tools else {})} for messages, tools in BATTERY]
    dataset, counts = sft.prepare(rows, slow_tokenizer, cfg, resolve(cfg, {"cuda": False, "bf16": False}))
    assert len(dataset) == len(BATTERY) and not counts
    for row, ids, labels in zip(rows, dataset["input_ids"], dataset["labels"]):
        assert trained_text(slow_tokenizer, ids, labels).endswith(row["messages"][-1]["content"] + "<|im_end|>")
    columns, _ = tokenize_chats(rows[:1], slow_tokenizer, 4096, "error")
    assert columns["labels"][0] == dataset["labels"][0]


@pytest.mark.samples
def test_batched_labels_equal_the_mask_on_the_medicalgpt_sample_with_qwen3():
    """The 1,000-record SFT sample with the real Qwen3 tokenizer: SFT's batched path == the assistant mask."""
    from transformers import AutoTokenizer

    from conftest import SAMPLES
    from medgpt.data.loading import load_split
    from medgpt.modeling.templates import load_template

    rows = load_split([SAMPLES / "medical_sft_1K_format.jsonl"], accepted=["sharegpt"]).rows[:100]
    tokenizer = AutoTokenizer.from_pretrained(official("qwen3"))
    tokenizer.chat_template = load_template("qwen3")
    assert batch_labels(tokenizer, [(r["messages"], None) for r in rows]) == \
        [chat_labels(tokenizer, r["messages"]) for r in rows]
