"""Tool-call and reasoning parsing (medgpt.inference.toolcalls) and stop strings (medgpt.inference.replies):
every format, malformed calls kept as content, and streaming (fed a character at a time) equal to the whole split."""
from __future__ import annotations

import json

import pytest

from medgpt.inference.replies import check_template_kwargs
from medgpt.modeling.generate import StopFilter
from medgpt.inference.toolcalls import PARSERS, TEMPLATE_FORMATS, Splitter, parse_tool_calls, thinks, tool_format
from medgpt.modeling.templates import TOOL_TEMPLATES, load_template, stop_tokens

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

    assert tool_format(None, "qwen3") == tool_format(None, "chatml") == "hermes"
    assert tool_format(None, "llama3") == "llama3_json"
    for name in TOOL_TEMPLATES:  # every medgpt template that renders tools has a parser
        assert tool_format(load_template(name), name) == TEMPLATE_FORMATS[name] in PARSERS, name
    # a template medgpt does not know by name is recognised from its text
    assert tool_format(load_template("qwen3_5"), None) == "qwen3_xml"
    assert tool_format(load_template("deepseek_r1"), None) == "deepseek_v3"
    assert tool_format("{{ messages }}", None) is None
    qwen3 = json.loads((official("qwen3") / "tokenizer_config.json").read_text())["chat_template"]
    assert tool_format(qwen3, None) == "hermes" and thinks(qwen3)
    assert not thinks(load_template("qwen"))
    deepseek = json.loads((official("deepseek_v3") / "tokenizer_config.json").read_text())["chat_template"]
    assert tool_format(deepseek, None) == "deepseek_v3"


# Two calls with nested, non-ASCII arguments, as an assistant message (OpenAI's form, arguments as a mapping)
RT_CALLS = [("lookup_drug", {"name": "布洛芬 (ibuprofen)", "filters": {"age": {"min": 12, "unit": "岁"},
                                                                     "forms": ["片剂", "gel"], "otc": True}}),
            ("book_visit", {"patient": {"名字": "张三", "notes": 'line 1\nline 2 "quoted" {x}'},
                            "slots": [1, 2.5, None], "urgent": False, "note": "下午 3 点以后\n请带病历"})]
RT_REASONING = "先查说明书，再预约。"
RT_ASKED = [{"role": "system", "content": "你是医生助理。"}, {"role": "user", "content": "布洛芬怎么吃？顺便帮我约个号。"}]
RT_TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
    key: {"type": "string" if isinstance(value, str) else "object" if isinstance(value, dict) else "array"
          if isinstance(value, list) else "boolean"} for key, value in args.items()}}}} for name, args in RT_CALLS]


def _generated(tokenizer, name, content):
    """(the assistant text a model trained on template `name` writes for RT_CALLS, whether the prompt opened
    <think>): the template's rendering of the answer, less the generation prompt and the end-of-turn token."""
    answer = {"role": "assistant", "content": content, "reasoning_content": RT_REASONING, "tool_calls": [
        {"type": "function", "function": {"name": n, "arguments": args}} for n, args in RT_CALLS]}
    render = lambda messages, **kw: tokenizer.apply_chat_template(  # noqa: E731
        messages, tools=RT_TOOLS, chat_template=load_template(name), tokenize=False, bos_token="<s>", **kw)
    prompt, full = render(RT_ASKED, add_generation_prompt=True), render(RT_ASKED + [answer])
    assert full.startswith(prompt), name
    text = full[len(prompt):].rstrip("\n")
    end = next(stop for stop in stop_tokens(name) if text.endswith(stop))
    return text[:-len(end)], prompt.rstrip().endswith("<think>")


@pytest.mark.parametrize("content", ["", "我先查一下 the label."])
@pytest.mark.parametrize("name", TOOL_TEMPLATES)
def test_tool_calls_round_trip_through_every_template(tiny_tokenizer, name, content):
    """What each template renders for an assistant's tool_calls parses back to the same calls, whole and
    streamed a character at a time, with the content (and the reasoning, where the template keeps it)."""
    if name == "llama3" and content:
        pytest.skip("Llama 3.1 JSON calls are the whole reply: content before them is not a call (llama3_json)")
    text, started = _generated(tiny_tokenizer, name, content)
    fmt, reasoning = tool_format(load_template(name), name), thinks(load_template(name))
    whole = Splitter(reasoning=reasoning, started=started, tool_format=fmt, tools=RT_TOOLS).split(text)
    kept = RT_REASONING if RT_REASONING in text else None
    assert whole[:2] == (kept, content) and _calls(whole[2]) == RT_CALLS, text
    streamed = _streamed(Splitter(reasoning=reasoning, started=started, tool_format=fmt, tools=True), text)
    assert (streamed[0].strip("\n") or None, streamed[1].strip()) == (kept, content)
    assert _calls(streamed[2]) == RT_CALLS  # without the tools list too: the values are not string-like JSON
    if not reasoning:  # the parser alone, on the whole text
        assert (parse_tool_calls(text, fmt)[0], _calls(parse_tool_calls(text, fmt)[1])) == (content, RT_CALLS)


XML = "<tool_call>\n<function=find_clinic>\n<parameter=zip>\n75001\n</parameter>\n<parameter=days>\n[1, 2]\n" \
      "</parameter>\n<parameter=city>\n巴黎\n</parameter>\n</function>\n</tool_call>"
DS = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"巴黎\"}\n```"
      "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("text, fmt, tools, content, calls", [
    (XML, "qwen3_xml", None, "", [("find_clinic", {"zip": 75001, "days": [1, 2], "city": "巴黎"})]),  # no schema
    (XML, "qwen3_xml", [{"type": "function", "function": {"name": "find_clinic", "parameters": {
        "type": "object", "properties": {"zip": {"type": "string"}, "days": {"type": "array"}}}}}], "",
     [("find_clinic", {"zip": "75001", "days": [1, 2], "city": "巴黎"})]),  # the schema says zip is a string
    ("Checking.\n" + XML.replace("</tool_call>", ""), "qwen3_xml", None, "Checking.",  # unclosed last block
     [("find_clinic", {"zip": 75001, "days": [1, 2], "city": "巴黎"})]),
    ("<tool_call>\n<function=now>\n</function>\n</tool_call>", "qwen3_xml", None, "", [("now", {})]),
    (XML, None, None, "", [("find_clinic", {"zip": 75001, "days": [1, 2], "city": "巴黎"})]),  # guessed
    ("Let me see." + DS, "deepseek_v3", None, "Let me see.", [("get_weather", {"city": "巴黎"})]),
    (DS.replace("<｜tool▁calls▁end｜>", ""), "deepseek_v3", None, "", [("get_weather", {"city": "巴黎"})]),
    ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "巴黎"}<｜tool▁call▁end｜>'
     '<｜tool▁calls▁end｜>', "deepseek_v3", None, "", [("get_weather", {"city": "巴黎"})]),  # V3.1's form
    (DS, None, None, "", [("get_weather", {"city": "巴黎"})]),
    ('get_weather\n{"city": "巴黎"}', "glm4", None, "", [("get_weather", {"city": "巴黎"})]),  # GLM-4's own output
    ('Example:\nf\n{"a": 1}\nthen words\nget_weather\n{"city": "巴黎"}', "glm4", None,
     'Example:\nf\n{"a": 1}\nthen words', [("get_weather", {"city": "巴黎"})]),  # only the trailing calls
    ('I will check.\n{"name": "get_weather", "arguments": {"city": "巴黎"}}', "chatglm3", None, "I will check.",
     [("get_weather", {"city": "巴黎"})]),
    ('Example:\nf\n{"a": 1}', "glm4", WEATHER, 'Example:\nf\n{"a": 1}', []),  # f is not one of the tools
    ('{"name": "f", "arguments": {}}', "chatglm3", WEATHER, '{"name": "f", "arguments": {}}', []),
])
def test_new_formats_parse(text, fmt, tools, content, calls):
    got_content, got = parse_tool_calls(text, fmt, tools)
    assert (got_content, _calls(got)) == (content, calls)
    whole = Splitter(tool_format=fmt, tools=tools or True).split(text)
    assert whole[1:] == (content, whole[2]) and _calls(whole[2]) == calls
    streamed = _streamed(Splitter(tool_format=fmt, tools=tools or True), text)
    assert (streamed[1].strip(), _calls(streamed[2])) == (content, calls)


@pytest.mark.parametrize("text, fmt", [
    ("<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>", "qwen3_xml"),  # unclosed parameter
    ("<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>", "qwen3_xml"),  # cut by max_tokens
    ("<tool_call>\n<function=>\n</function>\n</tool_call>", "qwen3_xml"),  # no name
    ("<tool_call>\n<function=f>\nwords<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>", "qwen3_xml"),
    ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', "qwen3_xml"),  # hermes JSON in the XML format
    (XML + "<tool_call>\n<function=g>\n</tool_call>", "qwen3_xml"),  # one bad call: all is content
    ("<｜tool▁calls▁begin｜>", "deepseek_v3"),
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{oops}\n```<｜tool▁call▁end｜>",
     "deepseek_v3"),
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n[1]\n```<｜tool▁call▁end｜>",
     "deepseek_v3"),  # arguments not an object
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function f\n```json\n{}\n```<｜tool▁call▁end｜>", "deepseek_v3"),
    (DS.split("<｜tool▁call▁end｜>")[0], "deepseek_v3"),  # cut inside the call
    (DS.replace("<｜tool▁call▁begin｜>", "junk"), "deepseek_v3"),
    ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n" + "[" * 100_000, "deepseek_v3"),
    ('get_weather\n{"city": oops}', "glm4"),
    ('get_weather\n{"city": "巴黎"} and then some words', "glm4"),
    ('two words\n{"city": "巴黎"}', "glm4"),  # a name has no spaces
    ("get_weather\n[1, 2]", "glm4"),
    ("get_weather\n", "glm4"),
    ("Example\n" + "{" * 100_000, "glm4"),
    ('{"name": "f", "arguments": "not json"}', "chatglm3"),
    ('{"arguments": {}}', "chatglm3"),
    ('{"name": "f", "arguments": {}} and some words', "chatglm3"),
    ("The set {1, 2} is small.", "chatglm3"),
    ('The record:\n{"name": "张三", "age": 30}', "chatglm3"),  # a JSON object with a name is no call
    ('{"name": "f", "arguments": {}}\n[[1]]', "chatglm3"),
    ("{" + "[" * 100_000, "chatglm3"),
    ('get_weather\n{"city": "巴黎"}', None),  # an unknown format never takes plain lines for a call
], ids=lambda value: value[:40] if isinstance(value, str) else str(value))
def test_malformed_new_formats_stay_plain_content(text, fmt):
    assert parse_tool_calls(text, fmt) == (text, [])
    assert Splitter(tool_format=fmt, tools=True).split(text) == (None, text.strip(), [])
    streamed = _streamed(Splitter(tool_format=fmt, tools=True), text)
    assert (streamed[1], streamed[2]) == (text, [])


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
