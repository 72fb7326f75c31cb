"""Tool-call data (issue 17.3): MedicalGPT v2.6 `conversations` + `tools` records and OpenAI/HF messages normalise
into HF messages (assistant `tool_calls`, role "tool") plus the record's tool schemas; tool calls carry loss, tool
results do not; tool-call preference data reaches DPO, ORPO, KTO and RM with its tools; a `tools` value or a
function_call that is not JSON stops the run with file:line and a fix; `medgpt data inspect` shows the tools."""
from __future__ import annotations

import json

import pytest

from conftest import compose, train_in_process

TOOL_DESCRIPTION = "Looks up the adult dose of a drug in the hospital formulary"  # only ever in `tools`
TOOLS = [{"name": "lookup_dose", "description": TOOL_DESCRIPTION,
          "parameters": {"type": "object", "properties": {"drug": {"type": "string"}}, "required": ["drug"]}}]
CALL = {"name": "lookup_dose", "arguments": {"drug": "aspirin"}}
RESULT = "aspirin: 500 mg every 4 hours"
ANSWER = "Adults take 500 mg every 4 hours."
MEDICALGPT_RECORD = {  # MedicalGPT v2.6's tool-call SFT format: tools and the call are JSON strings
    "conversations": [{"from": "human", "value": "What dose of aspirin for an adult?"},
                      {"from": "function_call", "value": json.dumps(CALL)},
                      {"from": "observation", "value": RESULT},
                      {"from": "gpt", "value": ANSWER}],
    "tools": json.dumps(TOOLS)}
# A stand-in for a tool-aware family template (the model templates are tested against the official ones elsewhere):
# tools listed in the system turn, calls inside <tool_call>, results in a user turn, answers in generation blocks.
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n"
    "</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{%- if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "<|im_end|>{% endgeneration %}\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}")


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


@pytest.fixture
def tool_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.chat_template = TOOL_TEMPLATE
    return tokenizer


def test_medicalgpt_tool_record_becomes_hf_messages_with_tools():
    from medgpt.data.formats import convert

    row = convert("sharegpt", MEDICALGPT_RECORD)
    assert row["messages"] == [
        {"role": "user", "content": "What dose of aspirin for an adult?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "lookup_dose", "arguments": {"drug": "aspirin"}}}]},
        {"role": "tool", "content": RESULT},
        {"role": "assistant", "content": ANSWER}]
    assert row["tools"] == [{"type": "function", "function": TOOLS[0]}]
    as_list = convert("sharegpt", {**MEDICALGPT_RECORD, "tools": [{"type": "function", "function": TOOLS[0]}]})
    assert as_list == row  # tools as a list, OpenAI-wrapped: the same


def test_openai_messages_keep_tool_calls_results_and_reasoning():
    from medgpt.data.formats import convert

    row = convert("messages", {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Dose?"},
        {"role": "assistant", "content": None, "reasoning_content": "I should look it up.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "lookup_dose", "arguments": "{\"drug\": \"aspirin\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
        {"role": "assistant", "content": "<think>It says 500 mg.</think>" + ANSWER}]})
    call, result, answer = row["messages"][1:]
    assert call == {"role": "assistant", "content": "", "reasoning_content": "I should look it up.", "tool_calls": [
        {"type": "function", "id": "call_1", "function": {"name": "lookup_dose", "arguments": {"drug": "aspirin"}}}]}
    assert result == {"role": "tool", "content": RESULT, "tool_call_id": "call_1"}
    assert answer["content"] == "<think>It says 500 mg.</think>" + ANSWER  # inline reasoning kept for the template
    legacy = convert("messages", {"messages": [{"role": "user", "content": "Dose?"},
                                               {"role": "assistant", "content": None, "function_call": CALL}]})
    assert legacy["messages"][1]["tool_calls"] == [{"type": "function", "function": CALL}]  # OpenAI's older field


def test_tool_calls_are_trained_tool_results_are_not(tool_tokenizer):
    from medgpt.data.formats import convert
    from medgpt.data.tokenize import IGNORE, tokenize_chats

    row = convert("sharegpt", MEDICALGPT_RECORD)
    columns, _ = tokenize_chats([row], tool_tokenizer, 4096, "error")
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    trained = tool_tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])
    untrained = tool_tokenizer.decode([t for t, label in zip(ids, labels) if label == IGNORE])
    assert '<tool_call>{"name": "lookup_dose", "arguments": {"drug": "aspirin"}}</tool_call>' in trained
    assert ANSWER in trained and RESULT not in trained
    assert RESULT in untrained and TOOL_DESCRIPTION in untrained  # the model is shown the tools it calls


@pytest.mark.parametrize("field, value, problem", [
    ("tools", '[{"name": "lookup_dose", "description": ', "'tools' is not valid JSON"),
    ("function_call", '{"name": "lookup_dose", "arguments": {"drug": }', "the function_call of turn 2 is not valid"),
])
def test_tools_or_function_call_not_json_stops_with_file_line_and_fix(tmp_path, capsys, field, value, problem):
    from medgpt.training.run import main

    record = json.loads(json.dumps(MEDICALGPT_RECORD))
    if field == "tools":
        record["tools"] = value
    else:
        record["conversations"][1]["value"] = value
    data = write_jsonl(tmp_path / "tools.jsonl", [MEDICALGPT_RECORD, record])
    cfg = compose(f"output_root={tmp_path}", "logger=none", f"data.train_files=[{data}]", "data.eval_split=0")
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"error: {data}:2: {problem}" in err and "Fix: write" in err and "data.on_bad_record=skip" in err


def test_inspect_shows_the_tool_definitions(tmp_path, capsys):
    from medgpt.tools.inspect import main

    data = write_jsonl(tmp_path / "tools.jsonl", [MEDICALGPT_RECORD])
    stats = main(["inspect", f"data.train_files=[{data}]", "data.eval_split=0"])
    out = capsys.readouterr().out
    assert stats["tools"] == {"records_with_tools": 1, "names": ["lookup_dose"]}
    assert TOOL_DESCRIPTION in out  # shown although it appears only in the record's `tools`


TOOL_PAIR = {"conversations": [{"from": "human", "value": "What dose of aspirin for an adult?"}],
             "tools": json.dumps(TOOLS),
             "chosen": {"from": "function_call", "value": json.dumps(CALL)},
             "rejected": "Take as many as you like."}


@pytest.mark.parametrize("stage", ["dpo", "orpo", "kto", "rm"])
def test_tool_call_preference_data_reaches_the_trainer_with_its_tools(stage, tool_tokenizer):
    """The prepared dataset, tokenized as the stage's TRL trainer tokenizes it, shows the tool schemas and the call."""
    from medgpt.config import resolve
    from medgpt.data.formats import convert
    from medgpt.training.stage import load_stage

    cfg = compose(f"stage={stage}", "data.eval_split=0")
    settings = resolve(cfg, {"cuda": False, "bf16": False})
    rows = [convert("sharegpt_preference", TOOL_PAIR)] * 2
    dataset, _ = load_stage(cfg.stage).prepare(rows, tool_tokenizer, cfg, settings)
    example = dataset[0]
    if stage == "orpo":  # TRL's ORPO applies the template without tools: rendered by medgpt
        text = example["prompt"] + example["chosen"]
    else:  # DPO / KTO / RM read the `tools` column (a JSON string) when they apply the template
        from trl.data_utils import apply_chat_template

        tools = json.loads(example["tools"])
        answer = example["completion"] if stage == "kto" else example["chosen"]
        rendered = apply_chat_template({"prompt": example["prompt"], "completion": answer}, tool_tokenizer,
                                       tools=tools)
        text = rendered["prompt"] + rendered["completion"]
    assert TOOL_DESCRIPTION in text
    assert '<tool_call>{"name": "lookup_dose", "arguments": {"drug": "aspirin"}}</tool_call>' in text


def test_tool_call_dpo_trains(tmp_path):
    pairs = [dict(TOOL_PAIR, rejected=f"Take {n} tablets.") for n in range(8)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    _, metrics = train_in_process(tmp_path, "stage=dpo", f"data.train_files=[{data}]", "data.eval_split=0",
                                  "stage.args.max_steps=1", "stage.args.per_device_train_batch_size=2")
    assert metrics["status"] == "completed" and metrics["global_step"] == 1
