"""Golden tests for every chat template: a fixed 2-turn conversation with a system prompt renders exactly the
family's published format, the assistant mask covers exactly each answer plus its end-of-turn token, and the
generation prompt is the training prompt (serving renders what training saw).

Expected strings are written by hand from each family's published format (see each template's header comment);
where a family's own format has no end-of-turn token after an answer, ours adds the one its generation stops on.
"""
import copy

import jinja2
import pytest

from medgpt.modeling.templates import END_OF_TURN, EXTRA_STOPS, TOOL_TEMPLATES, available, load_template

S = "You are a careful medical assistant."
Q1, A1 = "What is a fever?", "A body temperature above 38 °C."
Q2, A2 = "When should I see a doctor?", "If it lasts more than three days."
CHAT = [{"role": "system", "content": S}, {"role": "user", "content": Q1}, {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]

DS_BOS, DS_EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"
CHATML = (f"<|im_start|>system\n{S}<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
          f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n")
IM = [f"{A1}<|im_end|>", f"{A2}<|im_end|>"]
L3 = "<|start_header_id|>{}<|end_header_id|>\n\n"
# template: (bos_token, expected rendering, expected assistant spans)
GOLDEN = {
    "vicuna": ("<s>", f"<s>{S} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>",
               [f" {A1}</s>", f" {A2}</s>"]),
    "alpaca": ("<s>", f"<s>{S}\n\n### Instruction:\n{Q1}\n\n### Response:\n{A1}</s>\n\n"
                      f"### Instruction:\n{Q2}\n\n### Response:\n{A2}</s>\n\n", [f"{A1}</s>", f"{A2}</s>"]),
    "llama2": ("<s>", f"<s>[INST] <<SYS>>\n{S}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s><s>[INST] {Q2} [/INST] {A2} </s>",
               [f" {A1} </s>", f" {A2} </s>"]),
    "llama3": ("<|begin_of_text|>", "<|begin_of_text|>" + L3.format("system") + S + "<|eot_id|>" + L3.format("user")
               + Q1 + "<|eot_id|>" + L3.format("assistant") + A1 + "<|eot_id|>" + L3.format("user") + Q2
               + "<|eot_id|>" + L3.format("assistant") + A2 + "<|eot_id|>", [f"{A1}<|eot_id|>", f"{A2}<|eot_id|>"]),
    "mistral": ("<s>", f"<s>[INST] {S}\n\n{Q1} [/INST]{A1}</s>[INST] {Q2} [/INST]{A2}</s>", [f"{A1}</s>", f"{A2}</s>"]),
    "baichuan": ("<s>", f"{S}<reserved_102>{Q1}<reserved_103>{A1}</s><reserved_102>{Q2}<reserved_103>{A2}</s>",
                 [f"{A1}</s>", f"{A2}</s>"]),
    "baichuan2": ("<s>", f"{S}<reserved_106>{Q1}<reserved_107>{A1}</s><reserved_106>{Q2}<reserved_107>{A2}</s>",
                  [f"{A1}</s>", f"{A2}</s>"]),
    "intern": ("<s>", f"<s><|System|>:{S}\n<|User|>:{Q1}<eoh>\n<|Bot|>:{A1}<eoa>\n<|User|>:{Q2}<eoh>\n<|Bot|>:{A2}<eoa>\n",
               [f"{A1}<eoa>", f"{A2}<eoa>"]),
    "intern2": ("<s>", f"<s>{CHATML}{A2}<|im_end|>\n", IM),
    "chatml": (None, f"{CHATML}{A2}<|im_end|>\n", IM),
    "qwen": (None, f"{CHATML}{A2}<|im_end|>\n", IM),
    "yi": ("<|startoftext|>", f"{CHATML}{A2}<|im_end|>\n", IM),
    "qwen3": (None, f"{CHATML}<think>\n\n</think>\n\n{A2}<|im_end|>\n",
              [IM[0], f"<think>\n\n</think>\n\n{A2}<|im_end|>"]),
    "qwen3_nothink": (None, f"{CHATML}<think>\n\n</think>\n\n{A2}<|im_end|>\n", IM),
    "xverse": ("<|startoftext|>", f"<|startoftext|>{S}\n\nHuman: {Q1}\n\nAssistant: {A1}<|endoftext|>"
                                  f"Human: {Q2}\n\nAssistant: {A2}<|endoftext|>", [f"{A1}<|endoftext|>", f"{A2}<|endoftext|>"]),
    "chatglm": (None, f"{S}\n[Round 0]\n问：{Q1}\n答：{A1}\n[Round 1]\n问：{Q2}\n答：[gMASK]<sop>{A2}<eop>", [f"{A2}<eop>"]),
    "chatglm2": (None, f"[gMASK]sop{S}\n\n[Round 1]\n\n问：{Q1}\n\n答：{A1}</s>\n\n[Round 2]\n\n问：{Q2}\n\n答：{A2}</s>\n\n",
                 [f"{A1}</s>", f"{A2}</s>"]),
    "chatglm3": (None, f"[gMASK]sop<|system|>\n{S}<|user|>\n{Q1}<|assistant|>\n{A1}<|user|>\n{Q2}<|assistant|>\n{A2}<|user|>",
                 [f"\n{A1}<|user|>", f"\n{A2}<|user|>"]),
    "deepseek": (DS_BOS, f"{DS_BOS}{S}\n\nUser: {Q1}\n\nAssistant: {A1}{DS_EOS}User: {Q2}\n\nAssistant: {A2}{DS_EOS}",
                 [f" {A1}{DS_EOS}", f" {A2}{DS_EOS}"]),
    "orion": ("<s>", f"<s>{S}\n\nHuman: {Q1}\n\nAssistant: </s>{A1}</s>Human: {Q2}\n\nAssistant: </s>{A2}</s>",
              [f"{A1}</s>", f"{A2}</s>"]),
    "cohere": ("<BOS_TOKEN>", "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" + S + "<|END_OF_TURN_TOKEN|>"
               + "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>" + Q1 + "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
               + A1 + "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>" + Q2 + "<|END_OF_TURN_TOKEN|>"
               + "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" + A2 + "<|END_OF_TURN_TOKEN|>",
               [f"{A1}<|END_OF_TURN_TOKEN|>", f"{A2}<|END_OF_TURN_TOKEN|>"]),
    "gemma": ("<bos>", f"<bos><start_of_turn>user\n{S}\n\n{Q1}<end_of_turn>\n<start_of_turn>model\n{A1}<end_of_turn>\n"
                       f"<start_of_turn>user\n{Q2}<end_of_turn>\n<start_of_turn>model\n{A2}<end_of_turn>\n",
              [f"{A1}<end_of_turn>", f"{A2}<end_of_turn>"]),
}
DS_USER, DS_ASSISTANT = "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>"
GOLDEN["deepseek3"] = (DS_BOS, f"{DS_BOS}{S}{DS_USER}{Q1}{DS_ASSISTANT}{A1}{DS_EOS}{DS_USER}{Q2}{DS_ASSISTANT}{A2}{DS_EOS}",
                       [f"{A1}{DS_EOS}", f"{A2}{DS_EOS}"])
GOLDEN["deepseek_r1"] = (DS_BOS, f"{DS_BOS}{S}{DS_USER}{Q1}{DS_ASSISTANT}{A1}{DS_EOS}{DS_USER}{Q2}{DS_ASSISTANT}<think>\n"
                                 f"\n</think>\n\n{A2}{DS_EOS}", [f"{A1}{DS_EOS}", f"\n</think>\n\n{A2}{DS_EOS}"])
GOLDEN["qwen3_5"] = (None, f"{CHATML}<think>\n\n</think>\n\n{A2}<|im_end|>\n", [IM[0], f"\n</think>\n\n{A2}<|im_end|>"])
GOLDEN["qwen3_5_nothink"] = (None, f"{CHATML}<think>\n\n</think>\n\n{A2}<|im_end|>\n", IM)
GOLDEN["phi4"] = (None, "".join(f"<|im_start|>{r}<|im_sep|>{t}<|im_end|>" for r, t in
                                (("system", S), ("user", Q1), ("assistant", A1), ("user", Q2), ("assistant", A2))),
                  [f"{A1}<|im_end|>", f"{A2}<|im_end|>"])
GOLDEN["glm4"] = (None, f"[gMASK]<sop><|system|>\n{S}<|user|>\n{Q1}<|assistant|>\n{A1}<|user|>\n{Q2}<|assistant|>\n{A2}<|user|>",
                  [f"\n{A1}<|user|>", f"\n{A2}<|user|>"])
GOLDEN["mistral_nemo"] = ("<s>", f"<s>[INST]{Q1}[/INST]{A1}</s>[INST]{S}\n\n{Q2}[/INST]{A2}</s>", [f"{A1}</s>", f"{A2}</s>"])
GOLDEN["mistral_small"] = ("<s>", f"<s>[SYSTEM_PROMPT]{S}[/SYSTEM_PROMPT][INST]{Q1}[/INST]{A1}</s>[INST]{Q2}[/INST]{A2}</s>",
                           [f"{A1}</s>", f"{A2}</s>"])
# Markers the family tokenizers hold as single special tokens (so a mask boundary never falls inside one here).
MARKERS = [DS_USER, DS_ASSISTANT, "<think>", "</think>", "<|im_sep|>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]",
           "[/SYSTEM_PROMPT]", "[gMASK]", "<sop>", "<|system|>", "<|assistant|>", "<|observation|>"]
# XVERSE's prompt ends in "Assistant: ": with a byte-level BPE the space and the answer's first letter are one token,
# so that token (and with it the space) is trained; the rendered text itself is exactly XVERSE's.
GOLDEN["xverse"] = (*GOLDEN["xverse"][:2], [f" {A1}<|endoftext|>", f" {A2}<|endoftext|>"])
# yi's template does not use the BOS token (its Hub template has none): rendering ignores it.
GOLDEN["yi"] = (None, *GOLDEN["yi"][1:])


def test_every_template_has_a_golden_test_and_an_end_of_turn():
    assert sorted(GOLDEN) == available() == sorted(END_OF_TURN)


@pytest.fixture(scope="module")
def family_tokenizer(tiny_tokenizer):
    """The tiny tokenizer plus every family's special tokens, so ids and masks can be checked token by token."""
    tok = copy.deepcopy(tiny_tokenizer)
    specials = set(END_OF_TURN.values()) | {b for b, _, _ in GOLDEN.values() if b}
    specials |= {token for extra in EXTRA_STOPS.values() for token in extra} | set(MARKERS)
    tok.add_special_tokens({"additional_special_tokens": sorted(specials - set(tok.get_vocab()))})
    return tok


def render(tok, name, messages, **kwargs):
    bos = GOLDEN[name][0]
    return tok.apply_chat_template(messages, chat_template=load_template(name), tokenize=False,
                                   **({"bos_token": bos} if bos else {}), **kwargs)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_rendering(family_tokenizer, name):
    assert render(family_tokenizer, name, CHAT) == GOLDEN[name][1]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_assistant_mask_is_answer_plus_end_of_turn(family_tokenizer, name):
    tok = family_tokenizer
    bos = GOLDEN[name][0]
    out = tok.apply_chat_template(CHAT, chat_template=load_template(name), tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, **({"bos_token": bos} if bos else {}))
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    runs, current = [], []
    for token, m in zip(ids + [None], mask + [0]):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    assert [tok.decode(run) for run in runs] == GOLDEN[name][2]
    eot = tok.convert_tokens_to_ids(END_OF_TURN[name])
    assert all(run[-1] == eot for run in runs)
    assert sum(mask) == sum(len(run) for run in runs)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_generation_prompt_is_the_training_prompt(family_tokenizer, name):
    """What a server renders for the last user turn is exactly what preceded the last answer in training."""
    full = render(family_tokenizer, name, CHAT)
    prompt = render(family_tokenizer, name, CHAT[:-1], add_generation_prompt=True)
    assert full.startswith(prompt)
    assert full[len(prompt) - (name == "xverse"):].startswith(GOLDEN[name][2][-1])


def test_default_system_prompts(family_tokenizer):
    no_system = CHAT[1:3]
    assert render(family_tokenizer, "qwen", no_system).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert render(family_tokenizer, "chatml", no_system).startswith("<|im_start|>user\n")
    assert render(family_tokenizer, "vicuna", no_system).startswith("<s>A chat between a curious user")


def test_qwen3_reasoning_is_trained_only_in_the_thinking_template(family_tokenizer):
    chat = CHAT[:4] + [{"role": "assistant", "content": A2, "reasoning_content": "Duration matters."}]
    think = render(family_tokenizer, "qwen3", chat)
    assert think.endswith(f"<|im_start|>assistant\n<think>\nDuration matters.\n</think>\n\n{A2}<|im_end|>\n")
    nothink = render(family_tokenizer, "qwen3_nothink", chat)
    assert "Duration matters." not in nothink
    assert nothink.endswith(f"<think>\n\n</think>\n\n{A2}<|im_end|>\n")
    assert render(family_tokenizer, "qwen3_nothink", CHAT[:-1], add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")


TOOLS = [{"type": "function", "function": {"name": "lookup_drug", "description": "Look up a drug label",
                                           "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]
CALL = '{"name": "lookup_drug", "arguments": {"name": "ibuprofen"}}'
TOOL_CHAT = [{"role": "user", "content": "Dose of ibuprofen?"}, {"role": "function_call", "content": CALL},
             {"role": "observation", "content": '{"max_daily_mg": 1200}'},
             {"role": "assistant", "content": "Up to 1200 mg a day."}]


# The same conversation as data records become (medgpt.data): an assistant message with tool_calls, a "tool" result.
HF_TOOL_CHAT = [{"role": "user", "content": "Dose of ibuprofen?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "lookup_drug", "arguments": {"name": "ibuprofen"}}}]},
                {"role": "tool", "content": '{"max_daily_mg": 1200}'},
                {"role": "assistant", "content": "Up to 1200 mg a day."}]
LEGACY_TOOL_TEMPLATES = ("chatml", "qwen", "qwen3", "qwen3_nothink", "llama3", "chatglm3", "glm4")


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
def test_tool_calls_and_results(family_tokenizer, name):
    """tool_calls and role "tool": the tools listed before the question, the call trained, the result not."""
    text = render(family_tokenizer, name, HF_TOOL_CHAT, tools=TOOLS)
    assert "lookup_drug" in text.split("Dose of ibuprofen?")[0]
    assert "ibuprofen" in text.split("Dose of ibuprofen?")[1] and '{"max_daily_mg": 1200}' in text
    bos = GOLDEN[name][0]
    out = family_tokenizer.apply_chat_template(HF_TOOL_CHAT, tools=TOOLS, chat_template=load_template(name),
                                               return_dict=True, return_assistant_tokens_mask=True,
                                               **({"bos_token": bos} if bos else {}))
    trained = family_tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert "lookup_drug" in trained and "ibuprofen" in trained and "Up to 1200 mg a day." in trained
    assert "max_daily_mg" not in trained and "Dose of" not in trained


@pytest.mark.parametrize("name", LEGACY_TOOL_TEMPLATES)
def test_tool_turns(family_tokenizer, name):
    text = render(family_tokenizer, name, TOOL_CHAT, tools=TOOLS)
    assert "lookup_drug" in text.split("Dose of ibuprofen?")[0]  # the tool list comes before the question
    assert CALL in text and '{"max_daily_mg": 1200}' in text
    out = family_tokenizer.apply_chat_template(TOOL_CHAT, tools=TOOLS, chat_template=load_template(name),
                                               return_dict=True, return_assistant_tokens_mask=True)
    trained = family_tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert CALL in trained and "Up to 1200 mg a day." in trained and "max_daily_mg" not in trained


def test_tool_turn_formats(family_tokenizer):
    qwen = render(family_tokenizer, "qwen", TOOL_CHAT, tools=TOOLS)
    assert f"<|im_start|>assistant\n<tool_call>\n{CALL}\n</tool_call><|im_end|>\n" in qwen
    assert '<|im_start|>user\n<tool_response>\n{"max_daily_mg": 1200}\n</tool_response><|im_end|>\n' in qwen
    assert "<tools>\n" + '{"type": "function", "function": {"name": "lookup_drug"' in qwen
    assert render(family_tokenizer, "qwen", HF_TOOL_CHAT, tools=TOOLS) == qwen.replace(CALL, CALL.replace(
        '"arguments": {"name": "ibuprofen"}', '"arguments": {"name": "ibuprofen"}'))  # same text from tool_calls
    llama = render(family_tokenizer, "llama3", TOOL_CHAT, tools=TOOLS)
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"max_daily_mg": 1200}<|eot_id|>' in llama
    glm = render(family_tokenizer, "chatglm3", TOOL_CHAT, tools=TOOLS)
    assert f"<|assistant|>\n{CALL}<|observation|>\n" + '{"max_daily_mg": 1200}<|assistant|>\nUp to 1200' in glm


@pytest.mark.parametrize("name", sorted(set(GOLDEN) - set(TOOL_TEMPLATES)))
def test_templates_without_tools_refuse_tool_turns(family_tokenizer, name):
    with pytest.raises(jinja2.exceptions.TemplateError, match="no tool-call format"):
        render(family_tokenizer, name, TOOL_CHAT)
    with pytest.raises(jinja2.exceptions.TemplateError, match="no tool-call format"):
        render(family_tokenizer, name, CHAT, tools=TOOLS)


@pytest.mark.parametrize("name", ["chatglm3", "llama3"])
def test_generation_stops_on_every_end_of_turn_token(family_tokenizer, name):
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from medgpt.modeling.load import set_generation_defaults
    from medgpt.modeling.templates import stop_tokens

    model = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=family_tokenizer.pad_token_id))
    set_generation_defaults(model, family_tokenizer, name)
    expected = [family_tokenizer.convert_tokens_to_ids(t) for t in stop_tokens(name)]
    assert model.generation_config.eos_token_id == expected + [family_tokenizer.pad_token_id]
    assert len(set(expected)) == (2 if name == "chatglm3" else 1) and family_tokenizer.unk_token_id not in expected


def test_tool_turns_with_a_template_without_tools_is_a_user_error(family_tokenizer):
    from medgpt.data.tokenize import chat_labels
    from medgpt.errors import UserError

    tok = copy.deepcopy(family_tokenizer)
    tok.chat_template = load_template("llama2")
    with pytest.raises(UserError, match="template llama2 has no tool-call format; use qwen"):
        chat_labels(tok, TOOL_CHAT)


@pytest.mark.parametrize("think, nothink", [("qwen3", "qwen3_nothink"), ("qwen3_5", "qwen3_5_nothink")])
def test_nothink_templates_are_the_thinking_ones_with_another_default(family_tokenizer, think, nothink):
    """The *_nothink file is its thinking template with enable_thinking false unless a caller sets it (only the
    header comment and the switch line differ), so both render alike for either explicit value."""
    a, b = load_template(think).splitlines(), load_template(nothink).splitlines()
    assert a[2:] == b[2:] and "enable_thinking" in a[1] and "enable_thinking" in b[1]
    chat = CHAT[:4] + [{"role": "assistant", "content": A2, "reasoning_content": "Duration matters."}]
    for value in (True, False):
        assert render(family_tokenizer, think, chat, enable_thinking=value) == \
            render(family_tokenizer, nothink, chat, enable_thinking=value)
    assert render(family_tokenizer, nothink, chat) == render(family_tokenizer, think, chat, enable_thinking=False)


def test_qwen3_5_renders_xml_tool_calls_and_opens_thinking(family_tokenizer):
    text = render(family_tokenizer, "qwen3_5", HF_TOOL_CHAT, tools=TOOLS)
    assert ("<|im_start|>assistant\n<tool_call>\n<function=lookup_drug>\n<parameter=name>\nibuprofen\n</parameter>\n"
            "</function>\n</tool_call><|im_end|>\n") in text
    assert "<IMPORTANT>" in text.split("Dose of ibuprofen?")[0] and '{"name": "lookup_drug"' in text
    assert render(family_tokenizer, "qwen3_5", CHAT[:-1], add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n<think>\n")
    string_args = copy.deepcopy(HF_TOOL_CHAT)
    string_args[1]["tool_calls"][0]["function"]["arguments"] = '{"name": "ibuprofen"}'
    with pytest.raises(jinja2.exceptions.TemplateError, match="as a mapping"):
        render(family_tokenizer, "qwen3_5", string_args, tools=TOOLS)


def test_deepseek_r1_drops_history_reasoning_and_keeps_the_last(family_tokenizer):
    chat = [CHAT[1], {"role": "assistant", "content": f"<think>\nplan\n</think>\n\n{A1}"}, CHAT[3],
            {"role": "assistant", "content": A2, "reasoning_content": "Duration matters."}]
    text = render(family_tokenizer, "deepseek_r1", chat)
    assert "plan" not in text
    assert text.endswith(f"{DS_ASSISTANT}<think>\nDuration matters.\n</think>\n\n{A2}{DS_EOS}")
    history = render(family_tokenizer, "deepseek3", [CHAT[1], {"role": "assistant", "content": A1}])
    assert text.startswith(history)  # earlier turns: DeepSeek-V3's text of the answer without its reasoning
    off = render(family_tokenizer, "deepseek_r1", chat, enable_thinking=False)
    assert "Duration matters." not in off and off.endswith(f"{DS_ASSISTANT}<think>\n\n</think>\n\n{A2}{DS_EOS}")


def test_chat_template_kwargs_are_a_run_setting():
    """model.chat_template_kwargs (default {}) resolves into RunSettings.chat_template_kwargs as a plain dict, the
    value data preparation passes to apply_chat_template and final/medgpt.json records for serving."""
    from conftest import compose
    from medgpt.config import resolve

    device = {"cuda": False, "bf16": False}
    assert resolve(compose("model=qwen3-8b"), device).chat_template_kwargs == {}
    settings = resolve(compose("model=qwen3-8b", "model.chat_template_kwargs={enable_thinking:false}"), device)
    assert settings.chat_template_kwargs == {"enable_thinking": False}
    assert type(settings.chat_template_kwargs) is dict and settings.source("chat_template_kwargs") == \
        "model.chat_template_kwargs"
