"""Tokenize normalised records: chats with assistant-only labels, text into fixed-size blocks.

Labels are -100 on every token outside the template's {% generation %} spans (system, user, role headers),
so loss falls exactly on assistant text and its end-of-turn token, in every assistant turn (tool calls included; tool
results, which the template renders outside those spans, never). A record's `tools` and the run's
chat_template_kwargs reach the template. Fast tokenizers: conversations rendered, then encoded in batches with
offsets (batch_labels); slow / remote-code tokenizers, which have no offsets: tokenized span by span (segment_labels).

    medgpt data inspect data=sft_demo       # see the masked spans of two examples
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Tuple

from medgpt.errors import UserError

IGNORE = -100
OVERLONG = ("truncate", "drop", "error")


def progress(items, desc: str, min_items: int = 2000, total: Optional[int] = None):
    """A progress bar over a long loop (data preparation); silent for short ones and when not on a terminal."""
    from tqdm.auto import tqdm

    total = len(items) if total is None else total
    return tqdm(items, desc=desc, unit="rec", total=total, disable=total < min_items, leave=False)


def template_kwargs(settings) -> dict:
    """Extra chat-template variables of the run (RunSettings.chat_template_kwargs, e.g. enable_thinking)."""
    return dict(getattr(settings, "chat_template_kwargs", None) or {})


def chat_labels(tokenizer, messages: List[dict], tools: Optional[List[dict]] = None,
                **kwargs) -> Tuple[List[int], List[int]]:
    """(input_ids, labels) of one conversation: labels are the ids inside the template's {% generation %} spans,
    -100 elsewhere. `tools` (JSON schemas) and kwargs (chat_template_kwargs) reach the template.
    A fast tokenizer returns the assistant mask itself; a slow / remote-code one (no offsets, so no mask) is
    tokenized span by span (segment_labels), which tests/test_slow_tokenizer.py proves gives the same labels."""
    if not getattr(tokenizer, "is_fast", False):
        return segment_labels(tokenizer, messages, tools, **kwargs)
    from jinja2.exceptions import TemplateError

    try:
        out = tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, **kwargs)
    except TemplateError as e:  # raised by our templates, e.g. tool turns for a template without tools
        raise UserError(f"chat template: {e}") from None
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(mask):
        raise UserError(NO_GENERATION)
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)]


NO_GENERATION = ("the chat template marks no assistant tokens: it needs {% generation %} blocks around assistant "
                 "content (use a template from medgpt/modeling/templates: model.template=<name>)")


def render_spans(tokenizer, messages: List[dict], tools: Optional[List[dict]] = None,
                 **kwargs) -> Tuple[str, List[Tuple[int, int]]]:
    """The rendered conversation and the character spans of its {% generation %} blocks, rendered exactly as
    tokenizer.apply_chat_template renders it (same template, special tokens and variables), with no tokenization."""
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    template = tokenizer.get_chat_template(None, tools or None)
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]  # as apply_chat_template does
    try:
        rendered, spans = render_jinja_template([messages], tools=tools or None, chat_template=template,
                                                return_assistant_tokens_mask=True,
                                                **{**tokenizer.special_tokens_map, **kwargs})
    except TemplateError as e:
        raise UserError(f"chat template: {e}") from None
    return rendered[0], [tuple(span) for span in spans[0]]


def segment_labels(tokenizer, messages: List[dict], tools: Optional[List[dict]] = None,
                   **kwargs) -> Tuple[List[int], List[int]]:
    """Labels without an assistant mask from the tokenizer: render once, cut the text at the generation spans and
    tokenize each piece on its own (the prompt parts, then each answer, as MedicalGPT does per turn)."""
    text, spans = render_spans(tokenizer, messages, tools, **kwargs)
    if not spans:
        raise UserError(NO_GENERATION)
    ids: List[int] = []
    labels: List[int] = []
    position = 0
    for start, end in [*spans, (len(text), len(text))]:
        for piece, trained in ((text[position:start], False), (text[start:end], True)):
            if piece:
                piece_ids = tokenizer.encode(piece, add_special_tokens=False)
                ids += piece_ids
                labels += piece_ids if trained else [IGNORE] * len(piece_ids)
        position = max(position, end)
    return ids, labels


BATCH = 256  # conversations rendered, then tokenized in one call of the fast tokenizer's backend


def batch_labels(tokenizer, conversations: List[Tuple[List[dict], Optional[List[dict]]]],
                 **kwargs) -> List[Tuple[List[int], List[int]]]:
    """chat_labels for many (messages, tools) at once on a fast tokenizer: each conversation rendered with its
    generation spans (render_spans), all texts encoded in one backend call (parallel in Rust where cores are free),
    and the spans mapped to tokens through the offsets exactly as transformers' assistant mask does (a token
    overlapping a span is trained). tests/test_slow_tokenizer.py checks it equals chat_labels."""
    rendered = [render_spans(tokenizer, messages, tools, **kwargs) for messages, tools in conversations]
    encodings = tokenizer.backend_tokenizer.encode_batch([text for text, _ in rendered], add_special_tokens=False)
    out = []
    for (_, spans), encoding in zip(rendered, encodings):
        ids, labels, span = encoding.ids, [IGNORE] * len(encoding.ids), 0
        for i, (start, end) in enumerate(encoding.offsets):
            while span < len(spans) and start >= spans[span][1]:
                span += 1
            if span == len(spans):
                break
            if end > spans[span][0]:
                labels[i] = ids[i]
        if all(label == IGNORE for label in labels):
            raise UserError(NO_GENERATION)
        out.append((list(ids), labels))
    return out


def labelled(rows: List[dict], tokenizer, **kwargs):
    """(ids, labels) of each chat row in order: batched on a fast tokenizer, one by one otherwise."""
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
        for row in rows:
            yield chat_labels(tokenizer, row["messages"], row.get("tools"), **kwargs)
        return
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        yield from batch_labels(tokenizer, [(row["messages"], row.get("tools")) for row in chunk], **kwargs)


def tokenize_chats(rows: List[dict], tokenizer, max_length: int, overlong: str,
                   max_length_key: str = "data.max_length",
                   chat_template_kwargs: Optional[dict] = None) -> Tuple[Dict[str, list], Counter]:
    """-> columns {input_ids, labels} and counts {truncated, dropped_overlong, dropped_no_loss}.
    max_length_key: the config key max_length came from (RunSettings.sources), named in the error.
    A row's `tools` and chat_template_kwargs reach the template."""
    if overlong not in OVERLONG:
        raise UserError(f"data.overlong={overlong}: use one of {', '.join(OVERLONG)}")
    kwargs = chat_template_kwargs or {}
    columns: Dict[str, list] = {"input_ids": [], "labels": []}
    counts: Counter = Counter()
    for i, (ids, labels) in enumerate(progress(labelled(rows, tokenizer, **kwargs), "tokenize chats",
                                               total=len(rows))):
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
