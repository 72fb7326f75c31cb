"""Tool calls and reasoning in a model's reply text, split out as OpenAI's `tool_calls` and `reasoning_content`.

    python -c "from medgpt.inference.toolcalls import Splitter; print(Splitter(tool_format='hermes').split(\
'<think>hm</think>ok <tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>'))"

Formats (chosen by `tool_format` from the model's template name or its chat template text):
- `hermes` (Qwen2.5/Qwen3, ChatML, Hermes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one
  block per call, text around the blocks is content.
- `llama3_json` (Llama 3.1/3.2): the whole reply is `{"name": ..., "parameters": {...}}` (several separated by
  `;`), optionally after `<|python_tag|>`.
Reasoning: `<think>…</think>` at the start of the reply (or everything up to `</think>` when the prompt itself
opened `<think>`) becomes `reasoning_content`. What does not parse stays plain content: a malformed call is never
an error.
"""
from __future__ import annotations

import json
import uuid
from typing import List, Optional, Tuple

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
# medgpt template names -> the tool-call format their models write
TEMPLATE_FORMATS = {"qwen": "hermes", "qwen3": "hermes", "qwen3_nothink": "hermes", "chatml": "hermes",
                    "yi": "hermes", "llama3": "llama3_json"}
FORMATS = ("hermes", "llama3_json")


def tool_format(chat_template: Optional[str], template: Optional[str] = None) -> Optional[str]:
    """The tool-call format of a model: from medgpt's template name, else from the chat template's text."""
    if template in TEMPLATE_FORMATS:
        return TEMPLATE_FORMATS[template]
    text = chat_template or ""
    if TOOL_OPEN in text:
        return "hermes"
    if "ipython" in text or '"parameters"' in text:
        return "llama3_json"
    return None


def thinks(chat_template: Optional[str]) -> bool:
    """Whether the template knows <think> blocks (Qwen3, DeepSeek-R1 style): then replies are split."""
    return THINK_CLOSE in (chat_template or "")


def openai_call(name: str, arguments) -> dict:
    """One call in OpenAI's form: arguments as a JSON string."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _call(obj, argument_keys: Tuple[str, ...]) -> Optional[dict]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = next((obj[k] for k in argument_keys if k in obj), {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser
            return None
    if not isinstance(args, dict):
        return None
    return openai_call(obj["name"], args)


def parse_hermes(text: str) -> Optional[Tuple[str, List[dict]]]:
    """(content outside the blocks, calls), or None when there is no block or one does not parse."""
    if TOOL_OPEN not in text:
        return None
    calls, content, rest = [], [], text
    while TOOL_OPEN in rest:
        before, rest = rest.split(TOOL_OPEN, 1)
        content.append(before)
        body, _, rest = rest.partition(TOOL_CLOSE)  # an unclosed last block counts if its JSON is whole
        try:
            call = _call(json.loads(body.strip()), ("arguments", "parameters"))
        except (ValueError, RecursionError):  # not JSON, or nested past the parser
            return None
        if call is None:
            return None
        calls.append(call)
    content.append(rest)
    return "\n".join(part.strip() for part in content if part.strip()), calls


def parse_llama3_json(text: str) -> Optional[Tuple[str, List[dict]]]:
    """Llama 3.1 JSON tool calling: the reply is one or more `{"name", "parameters"}` objects (';'-separated)."""
    rest = text.strip()
    if rest.startswith(PYTHON_TAG):
        rest = rest[len(PYTHON_TAG):].lstrip()
    if not rest.startswith("{"):
        return None
    decoder, calls = json.JSONDecoder(), []
    while rest:
        try:
            obj, end = decoder.raw_decode(rest)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser
            return None
        call = _call(obj, ("parameters", "arguments"))
        if call is None:
            return None
        calls.append(call)
        rest = rest[end:].lstrip().lstrip(";").lstrip()
    return "", calls


PARSERS = {"hermes": parse_hermes, "llama3_json": parse_llama3_json}


def parse_tool_calls(text: str, fmt: Optional[str]) -> Tuple[str, List[dict]]:
    """(content, tool_calls) of a reply; (text, []) when it holds no call that parses in format `fmt`
    (None: try every format)."""
    for name in ([fmt] if fmt else FORMATS):
        parsed = PARSERS[name](text)
        if parsed is not None:
            return parsed
    return text, []


def held_back(buffer: str, markers: Tuple[str, ...]) -> int:
    """How many trailing characters of buffer might begin a marker (kept back until the next piece)."""
    for size in range(min(len(buffer), max(map(len, markers)) - 1), 0, -1):
        tail = buffer[-size:]
        if any(m.startswith(tail) for m in markers):
            return size
    return 0


class Splitter:
    """Splits a reply, fed piece by piece as it streams, into reasoning and content deltas; tool calls come
    out at the end. The same object does the non-streaming split (`split`), so both agree by construction.

    reasoning: split <think> blocks; started: the prompt already opened <think> (the reply begins inside it);
    tool_format: parse tool calls in that format (None: no tool parsing)."""

    def __init__(self, reasoning: bool = False, started: bool = False, tool_format: Optional[str] = None,
                 tools: bool = False):
        self.reasoning, self.tools, self.fmt = reasoning, tools, tool_format
        self.state = "reasoning" if reasoning and started else "start"
        self.buffer = ""
        self.fresh_content = True  # strip the newlines that follow </think>
        self.fresh_reasoning = True

    def feed(self, piece: str) -> List[dict]:
        self.buffer += piece
        out: List[dict] = []
        while True:
            before = (self.state, len(self.buffer))
            out += self._step(final=False)
            if (self.state, len(self.buffer)) == before:
                return [d for d in out if next(iter(d.values()))]

    def finish(self) -> Tuple[List[dict], List[dict]]:
        """(remaining deltas, tool_calls)."""
        out: List[dict] = []
        while True:
            before = (self.state, len(self.buffer))
            out += self._step(final=True)
            if (self.state, len(self.buffer)) == before:
                break
        calls: List[dict] = []
        if self.state == "tool":
            content, calls = parse_tool_calls(self.buffer, self.fmt)
            if calls:
                out.append({"content": content})
            else:
                out.append({"content": self.buffer})
            self.buffer = ""
        return [d for d in out if next(iter(d.values()))], calls

    def split(self, text: str) -> Tuple[Optional[str], str, List[dict]]:
        """(reasoning or None, content, tool_calls) of a whole reply."""
        deltas = self.feed(text)
        rest, calls = self.finish()
        deltas += rest
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
        content = "".join(d.get("content", "") for d in deltas).strip()
        return reasoning.strip("\n") or None, content, calls

    # one transition; returns deltas emitted
    def _step(self, final: bool) -> List[dict]:
        buf = self.buffer
        if self.state == "start":
            if not self.reasoning:
                self.state = "content"
                return []
            stripped = buf.lstrip()
            if stripped.startswith(THINK_OPEN):
                self.buffer = stripped[len(THINK_OPEN):]
                self.state = "reasoning"
            elif final or not THINK_OPEN.startswith(stripped):
                self.state = "content"
            return []
        if self.state == "reasoning":
            if self.fresh_reasoning:
                if not buf.strip("\n") and not final:
                    return []
                buf = self.buffer = buf.lstrip("\n")
                self.fresh_reasoning = False
            if THINK_CLOSE in buf:
                text, self.buffer = buf.split(THINK_CLOSE, 1)
                self.state = "content"
                return [{"reasoning_content": text.rstrip("\n")}]
            if final:
                self.buffer = ""
                return [{"reasoning_content": buf.rstrip("\n")}]
            keep = held_back(buf, (THINK_CLOSE,))
            body = buf[:len(buf) - keep]
            keep += len(body) - len(body.rstrip("\n"))  # newlines before </think> are not reasoning
            self.buffer = buf[len(buf) - keep:]
            return [{"reasoning_content": buf[:len(buf) - keep]}]
        if self.state == "content":
            if self.fresh_content:
                if not buf.strip() and not final:
                    return []
                buf = self.buffer = buf.lstrip("\n") if self.reasoning else buf
                self.fresh_content = False
                if self.tools and self.fmt in (None, "llama3_json") and \
                        buf.lstrip().startswith(("{", PYTHON_TAG)):
                    self.state = "tool"
                    return []
            if self.tools and self.fmt in (None, "hermes"):
                if TOOL_OPEN in buf:
                    text, rest = buf.split(TOOL_OPEN, 1)
                    self.buffer = TOOL_OPEN + rest
                    self.state = "tool"
                    return [{"content": text}]
                keep = 0 if final else held_back(buf, (TOOL_OPEN,))
            else:
                keep = 0
            self.buffer = buf[len(buf) - keep:] if keep else ""
            return [{"content": buf[:len(buf) - keep]}]
        return []  # "tool": everything is kept until finish()
