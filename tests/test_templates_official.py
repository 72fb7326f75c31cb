"""medgpt's chat templates against the official ones shipped with the real tokenizers (medgpt.modeling.official):
a battery of conversations renders to the same text, or to a difference documented in docs/templates.md and
asserted here; the assistant mask on the real tokenizer covers exactly the answers and their end-of-turn token.

    pytest tests/test_templates_official.py
"""
from __future__ import annotations

import copy
import functools

import jinja2
import pytest

from conftest import official
from medgpt.modeling.templates import END_OF_TURN, load_template

SYSTEM = "You are a careful medical assistant."
Q1, A1 = "What is a fever?", "A body temperature above 38 °C."
Q2, A2 = "When should I see a doctor?", "If it lasts more than three days."
R1, R2 = "The user asks for a definition.", "Duration is what matters."
TOOLS = [{"type": "function", "function": {
    "name": "lookup_drug", "description": "Look up the label of a drug (dose limits, interactions)",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}]
QT, AT = "Maximum daily dose of ibuprofen?", "Up to 1200 mg a day without a prescription."


def call(name: str, arguments: str) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


ARGS1, ARGS2 = '{"name": "ibuprofen"}', '{"name": "paracetamol"}'
RESULT1, RESULT2 = '{"max_daily_mg": 1200}', '{"max_daily_mg": 3000}'
U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text, **kw: {"role": "assistant", "content": text, **kw}  # noqa: E731
T = lambda text: {"role": "tool", "content": text}  # noqa: E731
S = {"role": "system", "content": SYSTEM}

# case -> (messages, apply_chat_template kwargs)
BATTERY = {
    "single_turn": ([U(Q1), A(A1)], {}),
    "system": ([S, U(Q1), A(A1)], {}),
    "multi_turn": ([S, U(Q1), A(A1), U(Q2), A(A2)], {}),
    "generation_prompt": ([S, U(Q1), A(A1), U(Q2)], {"add_generation_prompt": True}),
    "reasoning": ([U(Q1), A(A1, reasoning_content=R1)], {}),
    "reasoning_multi_turn": ([U(Q1), A(A1, reasoning_content=R1), U(Q2), A(A2, reasoning_content=R2)], {}),
    "inline_think": ([U(Q1), A(f"<think>\n{R1}\n</think>\n\n{A1}")], {}),
    "tools_listed": ([S, U(Q1), A(A1)], {"tools": TOOLS}),
    "tool_call": ([S, U(QT), A("", tool_calls=[call("lookup_drug", ARGS1)]), T(RESULT1), A(AT)], {"tools": TOOLS}),
    "parallel_tool_calls": ([U(QT), A("", tool_calls=[call("lookup_drug", ARGS1), call("lookup_drug", ARGS2)]),
                             T(RESULT1), T(RESULT2), A(AT)], {"tools": TOOLS}),
    "tool_result_generation_prompt": ([U(QT), A("", tool_calls=[call("lookup_drug", ARGS1)]), T(RESULT1)],
                                      {"tools": TOOLS, "add_generation_prompt": True}),
}
TOOL_CASES = {"tools_listed", "tool_call", "parallel_tool_calls", "tool_result_generation_prompt"}
REASONING_CASES = {"reasoning", "reasoning_multi_turn", "inline_think"}

# family -> (official tokenizer, medgpt template, template kwargs for ours, template kwargs for the official one)
OFF = {"enable_thinking": False}
FAMILIES = {
    "qwen3": ("qwen3", "qwen3", {}, {}),
    "qwen3-nothink": ("qwen3", "qwen3", OFF, OFF),  # model.chat_template_kwargs={enable_thinking:false}
    "qwen3_nothink-template": ("qwen3", "qwen3_nothink", {}, OFF),  # model.template=qwen3_nothink
    "llama3": ("llama3", "llama3", {}, {}),
    "llama3_1": ("llama3_1", "llama3", {}, {}),
    "gemma3": ("gemma3", "gemma", {}, {}),
    "deepseek_v3": ("deepseek_v3", "deepseek3", {}, {}),
}
L3_PROMPT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
DS_CALL_END = "<｜tool▁call▁end｜>"
DS_CLOSE = "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>"


def strip_reasoning(messages):
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if k != "reasoning_content"}
        if m["role"] == "assistant" and "</think>" in (m["content"] or ""):
            m["content"] = m["content"].split("</think>")[-1].lstrip("\n")
        out.append(m)
    return out


# (family, case) -> why medgpt's text differs, and how: a function (official renderer, messages, kwargs, ours) that
# asserts the documented relation. Every pair not listed here must render identically.
def _no_reasoning_when_thinking_is_off(render_official, messages, kwargs, ours):
    """Thinking off: reasoning is never trained or shown (the generation prompt opens an empty <think></think>); the
    official template still renders a given reasoning_content. medgpt == official on the messages without reasoning."""
    assert ours == render_official(strip_reasoning(messages), kwargs)


def _llama3_always_prompts(render_official, messages, kwargs, ours):
    """The npm llama3 template (an early Meta-Llama-3-8B-Instruct revision) appends the assistant header even without
    add_generation_prompt; medgpt follows add_generation_prompt (a training text ends with the last answer)."""
    assert render_official(messages, kwargs) == ours + L3_PROMPT


def _llama3_tools(render_official, messages, kwargs, ours):
    """The official template has no tool format (it drops `tools` and a call's `tool_calls`, and names a result turn
    "tool"). medgpt renders Llama 3.1's JSON tool calling: the function list in the system turn, a call as
    {"name", "parameters"}, the result in an "ipython" turn."""
    head = ours.split(f"<|start_header_id|>user")[0]
    assert "Given the following functions" in head and '"name": "lookup_drug"' in head
    for m in messages:
        if m["role"] == "tool":
            assert f"<|start_header_id|>ipython<|end_header_id|>\n\n{m['content']}<|eot_id|>" in ours
        for c in m.get("tool_calls") or []:
            assert f'{{"name": "lookup_drug", "parameters": {c["function"]["arguments"]}}}' in ours
    official_text = render_official(messages, kwargs)
    assert "lookup_drug" not in official_text.split("<|start_header_id|>user")[0]


def _gemma_refuses_tools(render_official, messages, kwargs, ours):
    """Gemma 3 has no tool-call format: its official template drops `tools` silently (and fails on a tool turn);
    medgpt refuses both with a message naming templates that have one, so tool data never trains without its tools."""
    assert isinstance(ours, jinja2.exceptions.TemplateError) and "no tool-call format" in str(ours)


def _deepseek_tools_listed(render_official, messages, kwargs, ours):
    """The official DeepSeek-V3 template drops `tools`; medgpt lists them after the system prompt ("## Tools ...").
    Without that section the text is the official one."""
    start = ours.index("## Tools")
    end = ours.index("<｜tool▁calls▁end｜>", start) + len("<｜tool▁calls▁end｜>")
    head = ours[:start]
    assert ours[start:end].count("lookup_drug") == 1
    assert head.removesuffix("\n\n") + ours[end:] == render_official(messages, kwargs)


def _deepseek_closes_calls(render_official, messages, kwargs, ours):
    """The official DeepSeek-V3 template closes a call turn (<｜tool▁calls▁end｜><｜end▁of▁sentence｜>) only after its
    second call, so a single call never ends and a model trained on it would not stop; medgpt closes every call
    turn. Besides that and the tools section (above), the text is the official one."""
    start = ours.index("## Tools")
    end = ours.index("<｜tool▁calls▁end｜>", start) + len("<｜tool▁calls▁end｜>")
    ours = ours[:start].removesuffix("\n\n") + ours[end:]
    single_call_official = render_official(messages, kwargs)
    if sum(len(m.get("tool_calls") or []) for m in messages) == 1:
        assert ours.replace(DS_CALL_END + DS_CLOSE, DS_CALL_END) == single_call_official
    else:
        assert ours == single_call_official


DIFFERENCES = {
    **{(f, c): _no_reasoning_when_thinking_is_off for f in ("qwen3-nothink", "qwen3_nothink-template")
       for c in ("reasoning", "reasoning_multi_turn", "inline_think")},
    **{("llama3", c): _llama3_always_prompts for c in BATTERY if c not in TOOL_CASES and c != "generation_prompt"},
    **{(f, c): _llama3_tools for f in ("llama3", "llama3_1") for c in TOOL_CASES},
    **{("gemma3", c): _gemma_refuses_tools for c in TOOL_CASES},
    ("deepseek_v3", "tools_listed"): _deepseek_tools_listed,
    **{("deepseek_v3", c): _deepseek_closes_calls for c in TOOL_CASES - {"tools_listed"}},
}


@functools.lru_cache(maxsize=None)
def tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(official(name))


def render_deepseek_official(tok, messages, kwargs):
    """DeepSeek-V3's official template renders a call turn only when its content is None, and transformers 5 drops
    None values from messages before rendering, so through apply_chat_template the official template cannot render a
    call at all. Its text is taken from jinja2 directly here (the environment apply_chat_template uses)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{**m, "content": None} if m.get("tool_calls") and not m["content"] else m for m in messages]
    return env.from_string(tok.chat_template).render(messages=messages, bos_token=tok.bos_token, **kwargs)


def render(family, messages, kwargs, *, ours=True, **extra):
    official_name, template, ours_kwargs, official_kwargs = FAMILIES[family]
    tok = tokenizer(official_name)
    if ours:
        return tok.apply_chat_template(copy.deepcopy(messages), chat_template=load_template(template),
                                       tokenize=False, **ours_kwargs, **kwargs, **extra)
    template_kwargs = official_kwargs
    if official_name == "deepseek_v3" and any(m.get("tool_calls") for m in messages):
        return render_deepseek_official(tok, copy.deepcopy(messages), {**template_kwargs, **kwargs, **extra})
    return tok.apply_chat_template(copy.deepcopy(messages), tokenize=False, **template_kwargs, **kwargs, **extra)


@pytest.mark.parametrize("case", sorted(BATTERY))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_text_as_the_official_template(family, case):
    messages, kwargs = BATTERY[case]
    try:
        ours = render(family, messages, kwargs)
    except jinja2.exceptions.TemplateError as e:
        ours = e
    difference = DIFFERENCES.get((family, case))
    if difference is None:
        assert ours == render(family, messages, kwargs, ours=False)
    else:
        difference(lambda m, k: render(family, m, k, ours=False), messages, kwargs, ours)


def masked_runs(ids, mask):
    runs, current = [], []
    for token, m in zip(list(ids) + [None], list(mask) + [0]):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs


@pytest.mark.parametrize("case", sorted(BATTERY))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_assistant_mask_on_the_real_tokenizer(family, case):
    """Exactly the assistant turns are trained: one run per assistant message, each ending in the template's
    end-of-turn token; every answer, call and reasoning (where kept) inside; no system, user or tool text."""
    messages, kwargs = BATTERY[case]
    official_name, template, ours_kwargs, _ = FAMILIES[family]
    if DIFFERENCES.get((family, case)) is _gemma_refuses_tools:
        pytest.skip("the template refuses tools (test_same_text_as_the_official_template)")
    tok = tokenizer(official_name)
    out = tok.apply_chat_template(copy.deepcopy(messages), chat_template=load_template(template), tokenize=True,
                                  return_dict=True, return_assistant_tokens_mask=True, **ours_kwargs, **kwargs)
    runs = masked_runs(out["input_ids"], out["assistant_masks"])
    answers = [m for m in messages if m["role"] == "assistant"]
    assert len(runs) == len(answers)
    eot = tok.convert_tokens_to_ids(END_OF_TURN[template])
    trained = [tok.decode(run) for run in runs]
    for run, text, message in zip(runs, trained, answers):
        assert run[-1] == eot
        assert strip_reasoning([message])[0]["content"].strip() in text
        for c in message.get("tool_calls") or []:
            assert c["function"]["name"] in text and c["function"]["arguments"][2:-2] in text
    untrained = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if not m])
    for m in messages:
        if m["role"] != "assistant" and m["content"]:
            assert m["content"] not in "".join(trained)
            assert m["content"] in untrained
        elif m["content"]:
            assert strip_reasoning([m])[0]["content"].strip() not in untrained
    if case == "reasoning" and not ours_kwargs and template.startswith("qwen3") and template != "qwen3_nothink":
        assert trained == [f"<think>\n{R1}\n</think>\n\n{A1}<|im_end|>"]


@pytest.mark.parametrize("case", sorted(c for c, (m, k) in BATTERY.items() if m[-1]["role"] == "assistant"))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_prompt_is_the_training_prompt(family, case):
    """What serving renders before the last answer is exactly what preceded it in training, and what follows is the
    trained run."""
    messages, kwargs = BATTERY[case]
    if DIFFERENCES.get((family, case)) is _gemma_refuses_tools:
        pytest.skip("the template refuses tools")
    full = render(family, messages, kwargs)
    prompt = render(family, messages[:-1], kwargs, add_generation_prompt=True)
    assert full.startswith(prompt)
    official_name, template, ours_kwargs, _ = FAMILIES[family]
    assert full[len(prompt):].rstrip("\n").endswith(END_OF_TURN[template])
