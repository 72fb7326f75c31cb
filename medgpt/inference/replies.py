"""One reply as `serve` and `chat` produce it: the prompt rendered with tools and chat-template options, generation
in a worker thread that the caller can cancel, `stop` strings, why it ended ("stop" / "length"), and the reply
split into reasoning, content and tool calls (medgpt.inference.toolcalls).

    python -c "from medgpt.modeling.load import load_for_inference; from medgpt.inference.replies import Replier; \
m, t, i = load_for_inference('tiny'); print(Replier(m, t, i).answer([{'role': 'user', 'content': 'hi'}]))"

The seam: generation goes through the model's own `generate()` (the transformers contract: a streamer, stopping
criteria, `max_new_tokens`, `eos_token_id`), so a test controls the text by giving a model whose logits it sets.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

from medgpt.inference.toolcalls import THINK_OPEN, Splitter, held_back, thinks, tool_format
from medgpt.modeling.generate import settings

# apply_chat_template's own parameters: not template variables, so not settable through chat_template_kwargs
RESERVED_TEMPLATE_KWARGS = {"conversation", "tools", "documents", "chat_template", "add_generation_prompt",
                            "continue_final_message", "tokenize", "padding", "truncation", "max_length",
                            "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs",
                            "messages"}


class ContextTooLong(ValueError):
    """The prompt and the requested answer do not fit the model's context."""


@dataclass
class Answer:
    content: str
    reasoning: Optional[str] = None
    tool_calls: List[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def context_length(model, tokenizer) -> Optional[int]:
    """The longest sequence the model takes (its position limit), or None when it does not say."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10 ** 7 else None


def check_template_kwargs(kwargs) -> dict:
    if not isinstance(kwargs, dict):
        raise ValueError("chat_template_kwargs must be a JSON object, e.g. {\"enable_thinking\": false}")
    bad = sorted(k for k in kwargs if k in RESERVED_TEMPLATE_KWARGS or not str(k).isidentifier())
    if bad:
        raise ValueError(f"chat_template_kwargs may not set {', '.join(bad)} (not template variables)")
    return dict(kwargs)


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
        try:
            with torch.inference_mode():
                self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=self.streamer,
                                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                    max_new_tokens=self.max_new_tokens, eos_token_id=self.stop_ids,
                                    **self.kwargs)
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


class Replier:
    """What answering chats with one loaded model needs: its tool-call format, whether replies carry <think>
    blocks, the default chat-template variables (RUN_INFO's chat_template_kwargs), its context and stop tokens."""

    def __init__(self, model, tokenizer, info: Optional[dict] = None, *, chat_template_kwargs=None,
                 max_model_len: Optional[int] = None):
        info = info or {}
        self.model, self.tokenizer = model, tokenizer
        self.template_kwargs = check_template_kwargs({**(info.get("chat_template_kwargs") or {}),
                                                      **(chat_template_kwargs or {})})
        self.tool_format = tool_format(tokenizer.chat_template, info.get("template"))
        self.reasoning = thinks(tokenizer.chat_template)
        self.context = max_model_len or context_length(model, tokenizer)
        eos = model.generation_config.eos_token_id
        stop_ids = list(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
            stop_ids.append(tokenizer.eos_token_id)
        self.stop_ids = stop_ids
        self.lock = threading.Lock()

    def render(self, messages: List[dict], tools: Optional[list] = None, template_kwargs=None) -> List[int]:
        """The prompt's token ids: the chat template with tools and template variables, assistant turn opened."""
        kwargs = {**self.template_kwargs, **check_template_kwargs(template_kwargs or {})}
        text = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                  tokenize=False, **kwargs)
        with self.lock:  # one encode at a time: a fast tokenizer's Rust state is not shared across threads
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def budget(self, n_prompt: int, max_tokens: Optional[int], default: Optional[int] = None) -> int:
        """max_new_tokens for this prompt: the request's (refused when it does not fit), else `default` or the
        model's saved one, shortened to what the context leaves."""
        wanted = max_tokens or settings(self.model, max_new_tokens=default)["max_new_tokens"]
        if self.context is None:
            return wanted
        left = self.context - n_prompt
        if max_tokens and n_prompt + max_tokens > self.context:
            raise ContextTooLong(
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion.")
        if left < 1:
            raise ContextTooLong(
                f"This model's maximum context length is {self.context} tokens. However, your messages resulted "
                f"in {n_prompt} tokens, which leave no room for a completion. Please reduce the length of the "
                f"messages.")
        return min(wanted, left)

    def generation(self, ids: List[int], *, max_new_tokens: int, stop: Sequence[str] = (),
                   cancel: Optional[threading.Event] = None, **overrides) -> Generation:
        kwargs = settings(self.model, **overrides)
        kwargs.pop("max_new_tokens")
        if self.model.generation_config.pad_token_id is None:
            kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        return Generation(self.model, self.tokenizer, ids, max_new_tokens=max_new_tokens, stop_ids=self.stop_ids,
                          stop=stop, cancel=cancel, **kwargs)

    def splitter(self, ids: List[int], tools) -> Splitter:
        """Splits this prompt's reply; the prompt may already have opened <think> (then the reply starts in it).
        tools: the request's tools list (its schemas type the arguments and name the callable functions), or a
        false value for no tool parsing."""
        opened = self.reasoning and self.tokenizer.decode(ids[-6:]).rstrip().endswith(THINK_OPEN)
        return Splitter(reasoning=self.reasoning, started=opened, tool_format=self.tool_format, tools=tools)

    def answer(self, messages: List[dict], tools: Optional[list] = None, *, template_kwargs=None,
               max_tokens: Optional[int] = None, stop: Sequence[str] = (), **overrides) -> Answer:
        """One whole reply (the chat CLI's one-shot path and a convenience for Python callers)."""
        ids = self.render(messages, tools, template_kwargs)
        gen = self.generation(ids, max_new_tokens=self.budget(len(ids), max_tokens), stop=stop, **overrides)
        text = "".join(gen)
        reasoning, content, calls = self.splitter(ids, tools or None).split(text)
        return Answer(content, reasoning, calls, "tool_calls" if calls else gen.finish_reason, len(ids),
                      gen.completion_tokens)
