"""Generation helpers shared by chat, serve, demo and rag: settings, streaming one chat, batched chats.

    python -c "from medgpt.modeling.load import load_for_inference; from medgpt.modeling.generate import reply; \
m, t, _ = load_for_inference('tiny'); print(reply(m, t, [{'role': 'user', 'content': 'hi'}]))"
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, List, Optional

# Used where final/generation_config.json does not set a value.
DEFAULTS = dict(max_new_tokens=512, temperature=0.7, top_p=0.9, repetition_penalty=1.0)
SETTINGS = tuple(DEFAULTS)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) or "length" (max_new_tokens reached)


def settings(model, **overrides) -> dict:
    """Generation kwargs: DEFAULTS < the model's saved generation config < non-None overrides.

    temperature 0 means greedy decoding (do_sample off, no sampling knobs passed)."""
    saved = model.generation_config.to_diff_dict() if model.generation_config is not None else {}
    out = {k: overrides.get(k) if overrides.get(k) is not None else saved.get(k, DEFAULTS[k]) for k in SETTINGS}
    out = {k: None if v is None else int(v) if k == "max_new_tokens" else float(v) for k, v in out.items()}
    if out["temperature"] is None or out["temperature"] <= 0:
        out.pop("temperature"), out.pop("top_p")
        out["do_sample"] = False
    else:
        out["do_sample"] = True
    return out


def prompt_ids(tokenizer, messages: List[dict]) -> List[int]:
    """The chat template applied with the assistant prompt opened: the tokens the model continues from."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"]


def _stop_ids(model) -> set:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def _stopper(stop_event: Optional[threading.Event]):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):  # e.g. an HTTP client went away: stop spending compute on it
        def __call__(self, input_ids, scores, **kwargs):
            return stop_event is not None and stop_event.is_set()

    return StoppingCriteriaList([Cancelled()])


def stream(model, tokenizer, messages: List[dict], *, stop_event: Optional[threading.Event] = None,
           **overrides) -> Iterator[str]:
    """Yield the reply's text piece by piece as it is generated (generation runs in a worker thread)."""
    import torch
    from transformers import TextIteratorStreamer

    ids = torch.tensor([prompt_ids(tokenizer, messages)], device=model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure = []

    def work():
        try:
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                               stopping_criteria=_stopper(stop_event), **settings(model, **overrides))
        except Exception as e:  # re-raised in the caller's thread below
            failure.append(e)
            streamer.end()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        if stop_event is not None and worker.is_alive():
            stop_event.set()
        worker.join()
    if failure:
        raise failure[0]


def complete_batch(model, tokenizer, conversations: List[List[dict]], *, batch_size: int = 8,
                   progress: bool = False, **overrides) -> List[Completion]:
    """Replies to many conversations, batch_size at a time (left padding so every row ends at the prompt)."""
    import torch
    from tqdm.auto import tqdm

    kwargs = settings(model, **overrides)
    stops = _stop_ids(model)
    pad = tokenizer.pad_token_id
    out: List[Completion] = []
    bar = tqdm(total=len(conversations), desc="generating", unit="q", disable=not progress)
    for start in range(0, len(conversations), batch_size):
        rows = [prompt_ids(tokenizer, messages) for messages in conversations[start:start + batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
        with torch.inference_mode():
            generated = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, width:].tolist()
        for row, new in zip(rows, generated):
            end = next((i for i, t in enumerate(new) if t in stops), None)
            kept = new if end is None else new[:end]
            out.append(Completion(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(row),
                                  len(kept) + (end is not None), "length" if end is None else "stop"))
        bar.update(len(rows))
    bar.close()
    return out


def reply(model, tokenizer, messages: List[dict], **overrides) -> str:
    """One reply, whole."""
    return complete_batch(model, tokenizer, [messages], **overrides)[0].text
