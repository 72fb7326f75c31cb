"""Tokenize normalised records: chats with assistant-only labels, text into fixed-size blocks.

Labels are -100 on every token outside the template's {% generation %} spans (system, user, role headers),
so loss falls exactly on assistant text and its end-of-turn token, in every assistant turn.

    medgpt data inspect data=sft_demo       # see the masked spans of two examples
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Tuple

from medgpt.errors import UserError

IGNORE = -100
OVERLONG = ("truncate", "drop", "error")


def progress(items, desc: str, min_items: int = 2000):
    """A progress bar over a long loop (data preparation); silent for short ones and when not on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="rec", disable=len(items) < min_items, leave=False)


def chat_labels(tokenizer, messages: List[dict]) -> Tuple[List[int], List[int]]:
    from jinja2.exceptions import TemplateError

    try:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    except TemplateError as e:  # raised by our templates, e.g. tool turns for a template without tools
        raise UserError(f"chat template: {e}") from None
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(mask):
        raise UserError("the chat template marks no assistant tokens: it needs {% generation %} blocks around "
                        "assistant content (use a template from medgpt/templates)")
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)]


def tokenize_chats(rows: List[dict], tokenizer, max_length: int, overlong: str,
                   max_length_key: str = "data.max_length") -> Tuple[Dict[str, list], Counter]:
    """-> columns {input_ids, labels} and counts {truncated, dropped_overlong, dropped_no_loss}.
    max_length_key: the config key max_length came from (RunSettings.sources), named in the error."""
    if overlong not in OVERLONG:
        raise UserError(f"data.overlong={overlong}: use one of {', '.join(OVERLONG)}")
    columns: Dict[str, list] = {"input_ids": [], "labels": []}
    counts: Counter = Counter()
    for i, row in enumerate(progress(rows, "tokenize chats")):
        ids, labels = chat_labels(tokenizer, row["messages"])
        if len(ids) > max_length:
            if overlong == "error":
                raise UserError(f"sample {i + 1} has {len(ids)} tokens, more than max_length={max_length}. Raise "
                                f"{max_length_key}, or set data.overlong=truncate|drop")
            if overlong == "drop":
                counts["dropped_overlong"] += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            counts["truncated"] += 1
            if all(label == IGNORE for label in labels):  # the answer fell past the cut: nothing to learn
                counts["dropped_no_loss"] += 1
                continue
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
    return columns, counts


def tokenize_blocks(rows: List[dict], tokenizer, block_size: int) -> Tuple[Dict[str, list], Counter]:
    """Concatenate texts (each followed by EOS) and cut into block_size blocks; a short tail is dropped
    unless it is the only block."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    stream: List[int] = []
    for row in progress(rows, "tokenize text"):
        stream += tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [eos]
    n_full = len(stream) // block_size
    blocks = [stream[i * block_size:(i + 1) * block_size] for i in range(n_full)] or [stream]
    counts = Counter(tokens=len(stream), dropped_tail_tokens=len(stream) - n_full * block_size if n_full else 0)
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}, counts
