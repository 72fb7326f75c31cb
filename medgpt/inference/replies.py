"""One reply as `serve` and `chat` produce it: the prompt rendered with tools and chat-template options, generation
in a worker thread that the caller can cancel (medgpt.modeling.generate.Generation: `stop` strings, why it ended,
"stop" / "length"), and the reply split into reasoning, content and tool calls (medgpt.inference.toolcalls).

    python -c "from medgpt.modeling.load import load_for_inference; from medgpt.inference.replies import Replier; \
m, t, i = load_for_inference('tiny'); print(Replier(m, t, i).answer([{'role': 'user', 'content': 'hi'}]))"

The seam: generation goes through the model's own `generate()` (the transformers contract: a streamer, stopping
criteria, `max_new_tokens`, `eos_token_id`), so a test controls the text by giving a model whose logits it sets.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from medgpt.inference.toolcalls import THINK_OPEN, Splitter, thinks, tool_format
from medgpt.modeling.generate import Generation, settings, stop_ids

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
        self.stop_ids = stop_ids(model, tokenizer)
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
