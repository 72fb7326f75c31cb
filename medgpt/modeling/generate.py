"""Generation helpers shared by chat, serve, demo and rag: settings, stop tokens, a reply generated in a worker thread
that the caller can cancel (`Generation`, with `stop` strings), streaming one chat, batched chats.

    python -c "from medgpt.modeling.load import load_for_inference; from medgpt.modeling.generate import reply; \
m, t, _ = load_for_inference('tiny'); print(reply(m, t, [{'role': 'user', 'content': 'hi'}]))"
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

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


def stop_ids(model, tokenizer=None) -> List[int]:
    """The token ids that end a reply: the model's saved eos_token_id(s), in order, then the tokenizer's EOS when
    `tokenizer` is given and it is not among them."""
    eos = model.generation_config.eos_token_id
    ids = list(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def left_padded(rows: List[List[int]], pad_id: int, device=None):
    """(input_ids, attention_mask) of token-id rows padded on the left, so that every row ends where its prompt
    does and generation continues all of them from the last column."""
    import torch

    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def held_back(buffer: str, markers: Tuple[str, ...]) -> int:
    """How many trailing characters of buffer might begin a marker (kept back until the next piece)."""
    for size in range(min(len(buffer), max(map(len, markers)) - 1), 0, -1):
        tail = buffer[-size:]
        if any(m.startswith(tail) for m in markers):
            return size
    return 0


class StopFilter:
    """Cuts the text at the first `stop` string; holds back a tail that may begin one until the next piece."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = tuple(s for s in stops if s)
        self.buffer = ""

    def feed(self, piece: str):
        """(text to pass on, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        self.buffer += piece
        found = [self.buffer.find(s) for s in self.stops if s in self.buffer]
        if found:
            text, self.buffer = self.buffer[:min(found)], ""
            return text, True
        keep = held_back(self.buffer, self.stops)
        text, self.buffer = self.buffer[:len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
        return text, False

    def flush(self) -> str:
        text, self.buffer = self.buffer, ""
        return text


def _streamer(tokenizer):
    from transformers import TextIteratorStreamer

    class Counting(TextIteratorStreamer):
        """Also keeps the generated token ids (to count them and see whether the last one ended the turn)."""

        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.generated: List[int] = []

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.generated.extend(value.reshape(-1).tolist())
            super().put(value)

    return Counting()


class Generation:
    """A reply being generated: iterate for its text pieces (stop strings applied); afterwards `finish_reason`
    ("stop": end of turn or a stop string, "length": max_new_tokens reached) and `completion_tokens`.
    Setting `cancel` (or closing the iterator) stops the model at its next step. A failure in the model is
    raised from the iteration."""

    def __init__(self, model, tokenizer, ids: List[int], *, max_new_tokens: int, stop_ids: Sequence[int],
                 stop: Sequence[str] = (), cancel: Optional[threading.Event] = None, **kwargs):
        self.model, self.tokenizer, self.ids, self.kwargs = model, tokenizer, ids, kwargs
        self.max_new_tokens, self.stop_ids = max_new_tokens, list(stop_ids)
        self.stops = StopFilter(stop)
        self.cancel = cancel or threading.Event()
        self.streamer = _streamer(tokenizer)
        self.hit_stop = False
        self.finish_reason: Optional[str] = None

    @property
    def completion_tokens(self) -> int:
        return len(self.streamer.generated)

    def _work(self, failure: list) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        cancel = self.cancel

        class Cancelled(StoppingCriteria):  # the client left, or a stop string was reached
            def __call__(self, input_ids, scores, **kwargs):
                return cancel.is_set()

        ids = torch.tensor([self.ids], device=self.model.device)
        eos = {"eos_token_id": self.stop_ids} if self.stop_ids else {}  # none: the model's own (None) stands
        try:
            with torch.inference_mode():
                self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=self.streamer,
                                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                    max_new_tokens=self.max_new_tokens, **eos, **self.kwargs)
        except Exception as e:  # re-raised in the consumer's thread
            failure.append(e)
            self.streamer.end()

    def __iter__(self) -> Iterator[str]:
        failure: list = []
        worker = threading.Thread(target=self._work, args=(failure,), daemon=True)
        worker.start()
        try:
            for piece in self.streamer:
                text, self.hit_stop = self.stops.feed(piece)
                if text:
                    yield text
                if self.hit_stop:
                    self.cancel.set()
                    break
            else:
                if not failure and (tail := self.stops.flush()):
                    yield tail
        finally:
            if worker.is_alive():
                self.cancel.set()
            worker.join()
        if failure:
            raise failure[0]
        generated = self.streamer.generated
        ended = bool(generated) and generated[-1] in self.stop_ids
        self.finish_reason = "length" if not (self.hit_stop or ended) and \
            len(generated) >= self.max_new_tokens else "stop"


def stream(model, tokenizer, messages: List[dict], *, stop_event: Optional[threading.Event] = None,
           **overrides) -> Iterator[str]:
    """Yield the reply's text piece by piece as it is generated (a `Generation`: a worker thread; closing the
    iterator or setting `stop_event` stops the model at its next step)."""
    kwargs = settings(model, **overrides)
    max_new_tokens = kwargs.pop("max_new_tokens")
    return iter(Generation(model, tokenizer, prompt_ids(tokenizer, messages), max_new_tokens=max_new_tokens,
                           stop_ids=stop_ids(model), cancel=stop_event, **kwargs))


def complete_batch(model, tokenizer, conversations: List[List[dict]], *, batch_size: int = 8,
                   progress: bool = False, **overrides) -> List[Completion]:
    """Replies to many conversations, batch_size at a time (left padding so every row ends at the prompt)."""
    import torch
    from tqdm.auto import tqdm

    kwargs = settings(model, **overrides)
    stops = stop_ids(model)
    out: List[Completion] = []
    bar = tqdm(total=len(conversations), desc="generating", unit="q", disable=not progress)
    for start in range(0, len(conversations), batch_size):
        rows = [prompt_ids(tokenizer, messages) for messages in conversations[start:start + batch_size]]
        ids, mask = left_padded(rows, tokenizer.pad_token_id, model.device)
        width = ids.shape[1]
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
