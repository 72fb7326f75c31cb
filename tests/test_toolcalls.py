"""Tool-call and reasoning parsing (medgpt.inference.toolcalls) and stop strings (medgpt.inference.replies):
every format, malformed calls kept as content, and streaming (fed a character at a time) equal to the whole split."""
from __future__ import annotations

import json

import pytest

from medgpt.inference.replies import StopFilter, check_template_kwargs
from medgpt.inference.toolcalls import Splitter, parse_tool_calls, thinks, tool_format

HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "巴黎"}}\n</tool_call>'
TWO = HERMES + '\n<tool_call>\n{"name": "lookup", "arguments": "{\\"drug\\": \\"aspirin\\"}"}\n</tool_call>'
LLAMA = '{"name": "get_weather", "parameters": {"city": "巴黎"}}'


def _calls(calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


@pytest.mark.parametrize("text, fmt, content, calls", [
    (HERMES, "hermes", "", [("get_weather", {"city": "巴黎"})]),
    ("Let me look. " + TWO + " Done.", "hermes", "Let me look.\nDone.",
     [("get_weather", {"city": "巴黎"}), ("lookup", {"drug": "aspirin"})]),
    ('<tool_call>{"name": "f", "arguments": {}}', "hermes", "", [("f", {})]),  # unclosed, whole JSON: a call
    (LLAMA, "llama3_json", "", [("get_weather", {"city": "巴黎"})]),
    ("<|python_tag|>" + LLAMA + '; {"name": "g", "arguments": {"x": 1}}', "llama3_json", "",
     [("get_weather", {"city": "巴黎"}), ("g", {"x": 1})]),
    (LLAMA, None, "", [("get_weather", {"city": "巴黎"})]),  # unknown format: every format is tried
])
def test_tool_calls_parse(text, fmt, content, calls):
    got_content, got = parse_tool_calls(text, fmt)
    assert got_content == content and _calls(got) == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in got)
    assert len({c["id"] for c in got}) == len(got)


@pytest.mark.parametrize("text, fmt", [
    ('<tool_call>\n{"name": "f", "arguments": {"x": oops}}\n</tool_call>', "hermes"),  # not JSON
    ('<tool_call>\n{"arguments": {}}\n</tool_call>', "hermes"),  # no name
    ('<tool_call>\n["f"]\n</tool_call>', "hermes"),  # not an object
    ('<tool_call>\n{"name": "f", "arguments": "not json"}\n</tool_call>', "hermes"),
    ('<tool_call>\n{"name": "f", "arguments": {}', "hermes"),  # cut by max_tokens
    (HERMES + '<tool_call>{"name": 3}</tool_call>', "hermes"),  # one bad call: all is content
    ('{"name": "f", "parameters": {}} and some words', "llama3_json"),
    ("The answer is {not a call}", "llama3_json"),
    (LLAMA, "hermes"),  # the model's format decides
    ("<tool_call>" + "[" * 100_000 + "</tool_call>", "hermes"),  # nested past the JSON parser's recursion
    ("{" + '"a":' * 50_000, "llama3_json"),
    ("just words", None),
])
def test_unparseable_calls_stay_plain_content(text, fmt):
    assert parse_tool_calls(text, fmt) == (text, [])
    reasoning, content, calls = Splitter(tool_format=fmt, tools=True).split(text)
    assert (reasoning, content, calls) == (None, text.strip(), [])


def _streamed(splitter, text):
    deltas = [d for ch in text for d in splitter.feed(ch)]
    rest, calls = splitter.finish()
    deltas += rest
    assert all(len(d) == 1 and next(iter(d.values())) for d in deltas)  # one non-empty field per delta
    return ("".join(d.get("reasoning_content", "") for d in deltas),
            "".join(d.get("content", "") for d in deltas), calls)


@pytest.mark.parametrize("text, started, reasoning, content, n_calls", [
    ("<think>\n想一想。\n</think>\n\n多喝水。", False, "想一想。", "多喝水。", 0),
    ("\n<think>\nstep 1\n\nstep 2\n</think>\n\nAnswer " + HERMES, False, "step 1\n\nstep 2", "Answer", 1),
    ("already thinking\n</think>\n\nAnswer", True, "already thinking", "Answer", 0),  # the prompt opened <think>
    ("<think>\ncut off by max_tokens", False, "cut off by max_tokens", "", 0),
    ("<thinking> is not a tag here", False, "", "<thinking> is not a tag here", 0),
    ("No reasoning at all. <think> late", False, "", "No reasoning at all. <think> late", 0),
    ("<think>\n\n</think>\n\nEmpty thoughts.", False, "", "Empty thoughts.", 0),
])
def test_reasoning_split_streaming_equals_whole(text, started, reasoning, content, n_calls):
    whole = Splitter(reasoning=True, started=started, tool_format="hermes", tools=True).split(text)
    assert whole[:2] == (reasoning or None, content) and len(whole[2]) == n_calls
    got_reasoning, got_content, calls = _streamed(
        Splitter(reasoning=True, started=started, tool_format="hermes", tools=True), text)
    assert (got_reasoning.strip("\n"), got_content.strip(), len(calls)) == (reasoning, content, n_calls)
    assert _calls(calls) == _calls(whole[2])


def test_without_reasoning_think_tags_are_content():
    text = "<think>x</think>y"
    assert Splitter(reasoning=False).split(text) == (None, text, [])


def test_formats_follow_the_template():
    from conftest import official

    from medgpt.modeling.templates import TOOL_TEMPLATES, load_template

    assert tool_format(None, "qwen3") == tool_format(None, "chatml") == "hermes"
    assert tool_format(None, "llama3") == "llama3_json"
    for name in TOOL_TEMPLATES:  # every medgpt template that renders tools has a parser, except ChatGLM3's
        assert (tool_format(load_template(name), name) is None) == (name == "chatglm3"), name
    assert tool_format("{{ messages }}", None) is None
    qwen3 = json.loads((official("qwen3") / "tokenizer_config.json").read_text())["chat_template"]
    assert tool_format(qwen3, None) == "hermes" and thinks(qwen3)
    assert not thinks(load_template("qwen"))


@pytest.mark.parametrize("pieces, stops, text, hit", [
    (["Drink wa", "ter. ST", "OP more"], ["STOP"], "Drink water. ", True),
    (["a", "b", "c"], ["bd"], "abc", False),  # held back "b" is released once it cannot begin "bd"
    (["x\n\nUser:", " hi"], ["\n\nUser:", "###"], "x", True),
    (["no stops here"], [], "no stops here", False),
])
def test_stop_strings(pieces, stops, text, hit):
    stop, out, reached = StopFilter(stops), [], False
    for piece in pieces:
        part, reached = stop.feed(piece)
        out.append(part)
        if reached:
            break
    else:
        out.append(stop.flush())
    assert ("".join(out), reached) == (text, hit)


def test_template_kwargs_are_template_variables_only():
    assert check_template_kwargs({"enable_thinking": False}) == {"enable_thinking": False}
    for bad in ({"tokenize": False}, {"add_generation_prompt": False}, {"not an identifier": 1}, ["x"]):
        with pytest.raises(ValueError, match="chat_template_kwargs"):
            check_template_kwargs(bad)
