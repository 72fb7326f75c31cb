"""Tool calls and reasoning in a model's reply text, split out as OpenAI's `tool_calls` and `reasoning_content`.

    python -c "from medgpt.inference.toolcalls import Splitter; print(Splitter(tool_format='hermes').split(\
'<think>hm</think>ok <tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>'))"

Formats (chosen by `tool_format` from the model's template name or its chat template text):
- `hermes` (Qwen2.5/Qwen3, ChatML, Hermes, Yi): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one
  block per call, text around the blocks is content.
- `qwen3_xml` (Qwen3.5, Qwen3-Coder): `<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>...
  \\n</function>\\n</tool_call>`; a value is the text itself where the tool's schema declares a string, else its
  JSON when it parses as JSON (no schema: JSON if it parses, else the text), as vLLM's `qwen3_xml` does.
- `deepseek_v3` (DeepSeek-V3, DeepSeek-R1): `<｜tool▁calls▁begin｜>` then per call `<｜tool▁call▁begin｜>function
  <｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>` (or V3.1's `NAME<｜tool▁sep｜>ARGS`), then
  `<｜tool▁calls▁end｜>`; text before is content.
- `llama3_json` (Llama 3.1/3.2): the whole reply is `{"name": ..., "parameters": {...}}` (several separated by
  `;` or newlines), optionally after `<|python_tag|>`.
- `glm4` (GLM-4): the reply ends in calls, each `NAME` alone on a line, then its JSON arguments on the next.
- `chatglm3` (medgpt's ChatGLM3 template): the reply ends in calls, each a `{"name": ..., "arguments": ...}`
  object starting a line.
Reasoning: `<think>…</think>` at the start of the reply (or everything up to `</think>` when the prompt itself
opened `<think>`) becomes `reasoning_content`. What does not parse stays plain content: a malformed call is never
an error.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from medgpt.modeling.generate import held_back

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
# medgpt template names -> the tool-call format their models write (every template in TOOL_TEMPLATES has one)
TEMPLATE_FORMATS = {"qwen": "hermes", "qwen3": "hermes", "qwen3_nothink": "hermes", "chatml": "hermes",
                    "yi": "hermes", "llama3": "llama3_json", "qwen3_5": "qwen3_xml", "qwen3_5_nothink": "qwen3_xml",
                    "deepseek3": "deepseek_v3", "deepseek_r1": "deepseek_v3", "glm4": "glm4",
                    "chatglm3": "chatglm3"}
FORMATS = ("hermes", "qwen3_xml", "deepseek_v3", "llama3_json", "glm4", "chatglm3")
# tried, in this order, when the format is unknown (the line formats would take plain text for a call)
GUESSED = ("hermes", "qwen3_xml", "deepseek_v3", "llama3_json")
# the text that opens a call, anywhere in a reply (the streaming Splitter holds back a piece that may begin one)
MARKERS = {"hermes": (TOOL_OPEN,), "qwen3_xml": (TOOL_OPEN,), "deepseek_v3": (DS_CALLS_BEGIN,),
           None: (TOOL_OPEN, DS_CALLS_BEGIN)}
# formats whose calls start a line with no marker: (what opens a call there, what may still grow into one)
_NAME = r"[\w.\-]{1,64}"
LINE_OPENERS = {
    "glm4": (re.compile(_NAME + r"[ \t]*\n[ \t]*\{"), re.compile(r"[\w.\-]{0,64}|" + _NAME + r"[ \t]*(\n[ \t]*)?")),
    "chatglm3": (re.compile(r"[ \t]*\{"), re.compile(r"[ \t]*")),
}


def tool_format(chat_template: Optional[str], template: Optional[str] = None) -> Optional[str]:
    """The tool-call format of a model: from medgpt's template name, else from the chat template's text."""
    if template in TEMPLATE_FORMATS:
        return TEMPLATE_FORMATS[template]
    text = chat_template or ""
    if DS_CALLS_BEGIN in text:
        return "deepseek_v3"
    if TOOL_OPEN in text and "<function=" in text and "<parameter=" in text:
        return "qwen3_xml"
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


def _json(text: str):
    """The JSON value of text; ValueError when it is not JSON (NaN and Infinity are not)."""
    def refuse(constant):
        raise ValueError(constant)
    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:  # nested past the parser
        raise ValueError("nested too deep") from None


def parse_hermes(text: str, tools: Optional[Sequence[dict]] = None) -> Optional[Tuple[str, List[dict]]]:
    """(content outside the blocks, calls), or None when there is no block or one does not parse."""
    return _blocks(text, lambda body: _call(_json(body.strip()), ("arguments", "parameters")))


def _blocks(text: str, parse_body) -> Optional[Tuple[str, List[dict]]]:
    """<tool_call> blocks, each body read by parse_body (a call, None or ValueError when it does not parse)."""
    if TOOL_OPEN not in text:
        return None
    calls, content, rest = [], [], text
    while TOOL_OPEN in rest:
        before, rest = rest.split(TOOL_OPEN, 1)
        content.append(before)
        body, _, rest = rest.partition(TOOL_CLOSE)  # an unclosed last block counts if its call is whole
        try:
            call = parse_body(body)
        except ValueError:
            return None
        if call is None:
            return None
        calls.append(call)
    content.append(rest)
    return "\n".join(part.strip() for part in content if part.strip()), calls


_FUNCTION = re.compile(r"<function=([^>\n]+)>")
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>")
_STRING_TYPES = {"string", "str", "text", "varchar", "char", "enum"}


def _parameter_types(tools: Optional[Sequence[dict]]) -> Dict[str, Dict[str, object]]:
    """{function name: {parameter: its declared JSON-schema type}} of an OpenAI tools list."""
    types: Dict[str, Dict[str, object]] = {}
    for tool in tools or ():
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        properties = (function.get("parameters") or {}).get("properties") if isinstance(
            function.get("parameters"), dict) else None
        types[function["name"]] = {key: (spec or {}).get("type") for key, spec in (properties or {}).items()
                                   if isinstance(spec, dict)}
    return types


def _xml_value(text: str, declared):
    """A <parameter> value: the text where the schema declares a string, else its JSON when it is JSON."""
    kinds = set(declared) if isinstance(declared, list) else {declared}
    if kinds - {"null"} and kinds - {"null"} <= _STRING_TYPES:
        return None if text == "null" and "null" in kinds else text
    try:
        return _json(text)
    except ValueError:
        return text


def _xml_call(body: str, types: Dict[str, Dict[str, object]]) -> Optional[dict]:
    """`<function=NAME>` `<parameter=KEY>\\nVALUE\\n</parameter>`... `</function>`, or None."""
    rest = body.strip()
    head = _FUNCTION.match(rest)
    if head is None or not rest.endswith("</function>") or not head.group(1).strip():
        return None
    name = head.group(1).strip()
    rest, arguments = rest[head.end():-len("</function>")], {}
    declared = types.get(name, {})
    while rest.strip():
        rest = rest.lstrip()
        start = _PARAMETER.match(rest)
        end = rest.find("</parameter>", start.end()) if start else -1
        if end < 0:
            return None
        value = rest[start.end():end]
        value = value[1:] if value.startswith("\n") else value
        value = value[:-1] if value.endswith("\n") else value
        key = start.group(1).strip()
        arguments[key] = _xml_value(value, declared.get(key))
        rest = rest[end + len("</parameter>"):]
    return openai_call(name, arguments)


def parse_qwen3_xml(text: str, tools: Optional[Sequence[dict]] = None) -> Optional[Tuple[str, List[dict]]]:
    """Qwen3.5 / Qwen3-Coder XML calls: (content outside the blocks, calls), or None; `tools` (the request's
    tools list) types the values."""
    types = _parameter_types(tools)
    return _blocks(text, lambda body: _xml_call(body, types))


_DS_FENCED = re.compile(r"([^\n]*)\n```(?:json)?[ \t]*\n(.*)\n```\s*", re.S)


def _deepseek_call(body: str) -> Optional[dict]:
    kind, sep, rest = body.partition(DS_SEP)
    if not sep:
        return None
    fenced = _DS_FENCED.fullmatch(rest)
    if fenced:  # V3 / R1: function<｜tool▁sep｜>NAME\n```json\nARGS\n```
        name, arguments = fenced.group(1).strip(), fenced.group(2)
    else:  # V3.1: NAME<｜tool▁sep｜>ARGS
        name, arguments = kind.strip(), rest.strip()
    try:
        return _call({"name": name, "arguments": _json(arguments)}, ("arguments",))
    except ValueError:
        return None


def parse_deepseek_v3(text: str, tools: Optional[Sequence[dict]] = None) -> Optional[Tuple[str, List[dict]]]:
    """DeepSeek-V3 / R1 calls: (content before and after the calls, calls), or None."""
    if DS_CALLS_BEGIN not in text:
        return None
    before, rest = text.split(DS_CALLS_BEGIN, 1)
    section, _, after = rest.partition(DS_CALLS_END)  # unclosed (cut after the last call) counts if it is whole
    calls = []
    while section.strip():
        section = section.strip()
        if not section.startswith(DS_CALL_BEGIN):
            return None
        body, closed, section = section[len(DS_CALL_BEGIN):].partition(DS_CALL_END)
        call = _deepseek_call(body) if closed else None
        if call is None:
            return None
        calls.append(call)
    if not calls:
        return None
    return "\n".join(part.strip() for part in (before, after) if part.strip()), calls


def parse_llama3_json(text: str, tools: Optional[Sequence[dict]] = None) -> Optional[Tuple[str, List[dict]]]:
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


def _line_starts(text: str, first: bool = True):
    """Where the lines of text start (0 too when `first`: text itself begins a line)."""
    if first:
        yield 0
    at = text.find("\n")
    while at >= 0:
        yield at + 1
        at = text.find("\n", at + 1)


def _glm4_chain(text: str, start: int, decoder) -> Tuple[Optional[List[dict]], List[int]]:
    """The calls from `start` to the end of text (NAME line, JSON line, ...), and where each began."""
    calls, starts, at, opener = [], [], start, LINE_OPENERS["glm4"][0]
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        starts.append(at)
        head = opener.match(text, at)
        if head is None:
            return None, starts
        name = text[at:head.end()].split("\n", 1)[0].strip()
        try:
            arguments, at = decoder.raw_decode(text, head.end() - 1)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser
            return None, starts
        call = _call({"name": name, "arguments": arguments}, ("arguments",))
        if call is None:
            return None, starts
        calls.append(call)
    return calls, starts


def _chatglm3_chain(text: str, start: int, decoder) -> Tuple[Optional[List[dict]], List[int]]:
    """The calls from `start` to the end of text (one JSON object per call), and where each began."""
    calls, starts, at = [], [], start
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        starts.append(at)
        try:
            obj, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser
            return None, starts
        # a call names its arguments (a JSON object that ends an answer is no call without them)
        named = isinstance(obj, dict) and ("arguments" in obj or "parameters" in obj)
        call = _call(obj, ("arguments", "parameters")) if named else None
        if call is None:
            return None, starts
        calls.append(call)
    return calls, starts


def _trailing_calls(text: str, fmt: str, chain, tools) -> Optional[Tuple[str, List[dict]]]:
    """(content, calls) where text ends in calls from the first line start that opens a call and from which
    the rest is all calls, or None. With a tools list, every call must name one of its functions."""
    opener, decoder, tried = LINE_OPENERS[fmt][0], json.JSONDecoder(), set()
    names = set(_parameter_types(tools)) if tools else None
    for start in _line_starts(text):
        if start in tried or not opener.match(text, start):
            continue
        calls, starts = chain(text, start, decoder)
        if calls and (names is None or all(c["function"]["name"] in names for c in calls)):
            return text[:start].strip(), calls
        tried.update(starts)  # a later start on this chain fails the same way
    return None


def parse_glm4(text: str, tools: Optional[Sequence[dict]] = None) -> Optional[Tuple[str, List[dict]]]:
    """GLM-4: the reply ends in calls, each `NAME` on its own line and its JSON arguments on the next;
    `tools` (the request's tools list): only its functions are called."""
    return _trailing_calls(text, "glm4", _glm4_chain, tools)


def parse_chatglm3(text: str, tools: Optional[Sequence[dict]] = None) -> Optional[Tuple[str, List[dict]]]:
    """medgpt's ChatGLM3 template: the reply ends in calls, each a `{"name", "arguments"}` object on its line;
    `tools` (the request's tools list): only its functions are called."""
    return _trailing_calls(text, "chatglm3", _chatglm3_chain, tools)


PARSERS = {"hermes": parse_hermes, "qwen3_xml": parse_qwen3_xml, "deepseek_v3": parse_deepseek_v3,
           "llama3_json": parse_llama3_json, "glm4": parse_glm4, "chatglm3": parse_chatglm3}


def parse_tool_calls(text: str, fmt: Optional[str], tools: Optional[Sequence[dict]] = None
                     ) -> Tuple[str, List[dict]]:
    """(content, tool_calls) of a reply; (text, []) when it holds no call that parses in format `fmt`
    (None: try the formats of GUESSED). `tools`: the request's tools list, which types qwen3_xml's values
    and limits glm4's and chatglm3's calls to its functions."""
    for name in ([fmt] if fmt else GUESSED):
        parsed = PARSERS[name](text, tools)
        if parsed is not None:
            return parsed
    return text, []


class Splitter:
    """Splits a reply, fed piece by piece as it streams, into reasoning and content deltas; tool calls come
    out at the end. The same object does the non-streaming split (`split`), so both agree by construction.

    reasoning: split <think> blocks; started: the prompt already opened <think> (the reply begins inside it);
    tool_format: the format of tool calls (None: try the formats of GUESSED); tools: parse tool calls at all
    (True, or the request's tools list: see parse_tool_calls)."""

    def __init__(self, reasoning: bool = False, started: bool = False, tool_format: Optional[str] = None,
                 tools=False):
        self.reasoning, self.tools, self.fmt = reasoning, bool(tools), tool_format
        self.schemas = tools if isinstance(tools, (list, tuple)) else None
        self.markers = MARKERS.get(tool_format, ())
        self.line_start = True  # the buffer begins a line (line formats: a call starts a line)
        self.state = "reasoning" if reasoning and started else "start"
        self.buffer = ""
        self.fresh_content = True  # strip the newlines that follow </think>
        self.fresh_reasoning = True

    def _steps(self, final: bool) -> List[dict]:
        """Step until neither the state nor the buffer changes; the deltas produced."""
        out: List[dict] = []
        while True:
            before = (self.state, len(self.buffer))
            out += self._step(final=final)
            if (self.state, len(self.buffer)) == before:
                return out

    def feed(self, piece: str) -> List[dict]:
        self.buffer += piece
        return [d for d in self._steps(final=False) if next(iter(d.values()))]

    def finish(self) -> Tuple[List[dict], List[dict]]:
        """(remaining deltas, tool_calls)."""
        out = self._steps(final=True)
        calls: List[dict] = []
        if self.state == "tool":
            content, calls = parse_tool_calls(self.buffer, self.fmt, self.schemas)
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
            keep = 0
            if self.tools and self.markers:
                at = min((buf.find(m) for m in self.markers if m in buf), default=-1)
                if at >= 0:
                    return self._to_tool(buf, at)
                keep = 0 if final else held_back(buf, self.markers)
            elif self.tools and self.fmt in LINE_OPENERS:
                opener, may_open = LINE_OPENERS[self.fmt]
                starts = list(_line_starts(buf, self.line_start))
                at = next((i for i in starts if opener.match(buf, i)), -1)
                if at >= 0:
                    return self._to_tool(buf, at)
                # the last line, or the last two when the last is blank, may still grow into a call
                keep = 0 if final else next((len(buf) - i for i in starts[-2:] if may_open.fullmatch(buf, i)), 0)
            return self._content(buf, len(buf) - keep)
        return []  # "tool": everything is kept until finish()

    def _content(self, buf: str, end: int) -> List[dict]:
        """Emits buf[:end] as content, keeps the rest."""
        self.buffer = buf[end:]
        if end:
            self.line_start = buf[end - 1] == "\n"
        return [{"content": buf[:end]}]

    def _to_tool(self, buf: str, at: int) -> List[dict]:
        """A call opens at buf[at]: the text before is content, the rest waits for finish()."""
        out = self._content(buf, at)
        self.state = "tool"
        return out
