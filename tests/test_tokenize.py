"""Label masking token by token, overlong policies, PT blocks."""
import pytest

from medgpt.data.tokenize import IGNORE, chat_labels, tokenize_blocks, tokenize_chats
from medgpt.errors import UserError

THREE_TURNS = [
    {"role": "system", "content": "You are a doctor."},
    {"role": "user", "content": "I have a fever."},
    {"role": "assistant", "content": "Rest and drink fluids."},
    {"role": "user", "content": "For how long?"},
    {"role": "assistant", "content": "Until the fever is gone."},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "Get well soon."},
]


def _assistant_token_spans(tokenizer, messages):
    """Expected labelled positions, computed independently from prefix renderings: for each assistant turn the
    tokens between '<|im_start|>assistant\\n' and the end of its '<|im_end|>'."""
    expected = set()
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = before + m["content"] + "<|im_end|>"
        start = len(tokenizer(before, add_special_tokens=False)["input_ids"])
        end = len(tokenizer(upto, add_special_tokens=False)["input_ids"])
        expected |= set(range(start, end))
    return expected


def test_labels_are_ignore_exactly_outside_assistant_turns(tiny_tokenizer):
    ids, labels = chat_labels(tiny_tokenizer, THREE_TURNS)
    full = tiny_tokenizer.apply_chat_template(THREE_TURNS, tokenize=False)
    assert ids == tiny_tokenizer(full, add_special_tokens=False)["input_ids"]
    expected = _assistant_token_spans(tiny_tokenizer, THREE_TURNS)
    for pos, (token, label) in enumerate(zip(ids, labels)):
        if pos in expected:
            assert label == token, f"assistant token {pos} ({tiny_tokenizer.decode([token])!r}) must carry loss"
        else:
            assert label == IGNORE, f"non-assistant token {pos} ({tiny_tokenizer.decode([token])!r}) must be -100"
    # every assistant turn is trained and ends with the end-of-turn token, so generation learns to stop
    trained = tiny_tokenizer.decode([t for t in labels if t != IGNORE])
    assert trained == "Rest and drink fluids.<|im_end|>Until the fever is gone.<|im_end|>Get well soon.<|im_end|>"
    eot = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for t in labels if t == eot) == 3


def test_overlong_policies_are_counted(tiny_tokenizer):
    short = {"messages": THREE_TURNS[1:3]}
    long = {"messages": [THREE_TURNS[1], {"role": "assistant", "content": "very long answer " * 50}]}
    columns, counts = tokenize_chats([short, long], tiny_tokenizer, 64, "truncate")
    assert counts["truncated"] == 1 and len(columns["input_ids"]) == 2
    assert max(len(x) for x in columns["input_ids"]) == 64
    columns, counts = tokenize_chats([short, long], tiny_tokenizer, 64, "drop")
    assert counts["dropped_overlong"] == 1 and len(columns["input_ids"]) == 1
    with pytest.raises(UserError, match="sample 2 has .* tokens, more than max_length=64"):
        tokenize_chats([short, long], tiny_tokenizer, 64, "error")


def test_truncation_that_cuts_every_answer_token_drops_and_counts(tiny_tokenizer):
    long_question = {"messages": [{"role": "user", "content": "why " * 100}, {"role": "assistant", "content": "ok"}]}
    columns, counts = tokenize_chats([long_question], tiny_tokenizer, 32, "truncate")
    assert counts["dropped_no_loss"] == 1 and columns["input_ids"] == []


def test_pt_blocks_concatenate_with_eos(tiny_tokenizer):
    rows = [{"text": "fever and cough " * 20}, {"text": "headache " * 30}]
    columns, counts = tokenize_blocks(rows, tiny_tokenizer, 16)
    assert all(len(b) == 16 for b in columns["input_ids"])
    assert columns["labels"] == columns["input_ids"]
    assert counts["tokens"] == 16 * len(columns["input_ids"]) + counts["dropped_tail_tokens"]
    stream = [t for b in columns["input_ids"] for t in b]
    assert tiny_tokenizer.eos_token_id in stream
