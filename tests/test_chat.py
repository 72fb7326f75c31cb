"""Loading a trained run for inference, the generation helpers and the chat CLI: interactive, one-shot and
batch in-process; two processes under torchrun as a real subprocess."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import subprocess

import pytest

from conftest import ROOT, free_port, read_jsonl, train_in_process

GREEDY = dict(temperature=0, repetition_penalty=3.0, max_new_tokens=12)  # varied text from the tiny model
QUESTIONS = ["头痛发热怎么办？", "What causes high blood pressure and how is it treated over many years?", "感冒"]


def _conversations(questions=QUESTIONS):
    return [[{"role": "user", "content": q}] for q in questions]


def test_loader_uses_the_runs_template_and_stops_on_end_of_turn(sft_run, sft_loaded):
    model, tokenizer, info = sft_loaded
    final = sft_run[0] / "final"
    assert info["template"] == "qwen" and info["stage"] == "sft"
    assert tokenizer.chat_template == (final / "chat_template.jinja").read_text(encoding="utf-8")
    eos = model.generation_config.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    saved = json.loads((final / "generation_config.json").read_text())
    from medgpt.modeling.generate import settings

    assert settings(model)["max_new_tokens"] == saved["max_new_tokens"]
    assert settings(model, max_new_tokens=5, temperature=0) == {"max_new_tokens": 5, "repetition_penalty": 1.0,
                                                                 "do_sample": False}


def test_loader_errors_are_clear(tmp_path, sft_run):
    from medgpt.errors import UserError
    from medgpt.modeling.load import load_for_inference

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no model"):
        load_for_inference(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no such folder"):
        load_for_inference(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a LoRA adapter"):
        load_for_inference(str(sft_run[0]), base="tiny")


def test_adapter_loads_on_its_base_and_a_wrong_base_is_refused(tmp_path):
    from medgpt.errors import UserError
    from medgpt.modeling.generate import reply
    from medgpt.modeling.load import load_for_inference
    from medgpt.modeling.tiny import tiny_path

    run_dir, _ = train_in_process(tmp_path, "hardware=lora", "stage.args.max_steps=2")
    model, tokenizer, info = load_for_inference(str(run_dir))
    assert info["adapter"] and hasattr(model, "peft_config")
    assert isinstance(reply(model, tokenizer, _conversations()[0], **GREEDY), str)
    other = tiny_path(hidden_size=32, intermediate_size=64)  # same family, another size
    with pytest.raises(UserError, match="does not fit the base model"):
        load_for_inference(str(run_dir), base=str(other))


def test_4bit_load_generates(sft_run):
    from medgpt.modeling.generate import reply
    from medgpt.modeling.load import load_for_inference

    model, tokenizer, _ = load_for_inference(str(sft_run[0]), quantization="4bit")  # bitsandbytes CPU backend
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert reply(model, tokenizer, _conversations()[0], **GREEDY)


def test_left_padded_batch_equals_one_by_one_and_streaming(sft_loaded):
    from medgpt.modeling.generate import complete_batch, stream

    model, tokenizer, _ = sft_loaded
    batch = complete_batch(model, tokenizer, _conversations(), batch_size=3, **GREEDY)
    alone = [complete_batch(model, tokenizer, [c], **GREEDY)[0] for c in _conversations()]
    assert [b.text for b in batch] == [a.text for a in alone]
    assert len({b.prompt_tokens for b in batch}) == 3  # really different lengths, so padding was exercised
    assert all(b.text for b in batch)
    streamed = "".join(stream(model, tokenizer, _conversations()[1], **GREEDY))
    assert streamed.strip() == alone[1].text


def test_generation_stops_on_a_stop_token(sft_loaded):
    from medgpt.modeling.generate import complete_batch

    model, tokenizer, _ = sft_loaded
    first = complete_batch(model, tokenizer, _conversations()[:1], temperature=0, max_new_tokens=3)[0]
    assert first.finish_reason == "length" and first.completion_tokens == 3
    # make the first token greedy decoding produces a stop token: the reply must end right there
    inputs = tokenizer.apply_chat_template(_conversations()[0], add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt")
    produced = model.generate(**inputs, max_new_tokens=1, do_sample=False)[0, -1].item()
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [produced]
        stopped = complete_batch(model, tokenizer, _conversations()[:1], temperature=0, max_new_tokens=3)[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert (stopped.finish_reason, stopped.completion_tokens, stopped.text) == ("stop", 1, "")


def test_one_shot_and_batch_in_process(tmp_path, sft_run, sft_loaded, capsys):
    from medgpt.inference.chat import main
    from medgpt.modeling.generate import complete_batch

    run = str(sft_run[0])
    flags = ["--temperature", "0", "--repetition-penalty", "3", "--max-new-tokens", "12"]
    assert main([run, "--prompt", QUESTIONS[0], *flags]) == 0
    expected = complete_batch(*sft_loaded[:2], _conversations(), **GREEDY)
    assert capsys.readouterr().out.strip() == expected[0].text

    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"id": i, "question": q}, ensure_ascii=False)
                                   for i, q in enumerate(QUESTIONS)) + "\n", encoding="utf-8")
    out = tmp_path / "a.jsonl"
    assert main([run, "--input", str(questions), "--output", str(out), "--batch-size", "2", *flags]) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["question"] for r in rows] == QUESTIONS
    assert [r["answer"] for r in rows] == [e.text for e in expected]
    assert "generating" in capsys.readouterr().err  # the progress bar


def test_bad_input_is_reported_with_its_line_before_loading(tmp_path, capsys):
    from medgpt.inference.chat import main

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok"}\n{"answer": "no question here"}\n', encoding="utf-8")
    assert main(["no/such/model/anywhere", "--input", str(bad), "--output", str(tmp_path / "a.jsonl")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_says_it_is_missing(tmp_path, sft_run, capsys):
    from medgpt.inference.chat import main

    questions = tmp_path / "q.txt"
    questions.write_text("头痛\n", encoding="utf-8")
    assert main([str(sft_run[0]), "--backend", "vllm", "--input", str(questions),
                 "--output", str(tmp_path / "a.jsonl")]) == 2
    assert "pip install vllm" in capsys.readouterr().err


def test_interactive_chat(sft_run, sft_loaded, monkeypatch, capsys):
    """Typed turns on stdin: replies stream after 'assistant> ', /clear forgets, /exit quits before later lines."""
    import io

    from medgpt.inference.chat import main

    monkeypatch.setattr("sys.stdin", io.StringIO("头痛\n/clear\nhello\n/exit\nnever read\n"))
    assert main([str(sft_run[0]), "--system", "你是医生", "--max-new-tokens", "8", "--temperature", "0",
                 "--repetition-penalty", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2 and "(history cleared)" in out
    replies = [line.split("assistant> ", 1)[1].strip() for line in out.splitlines() if "assistant> " in line]
    from medgpt.modeling.generate import reply

    after_clear = reply(*sft_loaded[:2], [{"role": "system", "content": "你是医生"},
                                         {"role": "user", "content": "hello"}], **{**GREEDY, "max_new_tokens": 8})
    assert replies[1] == after_clear and after_clear  # the answer after /clear saw no earlier turn


@pytest.mark.slow
def test_torchrun_two_processes_merge_in_order(tmp_path, sft_run, sft_loaded):
    from medgpt.modeling.generate import complete_batch

    questions = tmp_path / "q.txt"
    many = [f"{q} ({i})" for i, q in enumerate(QUESTIONS * 2)]  # 6 lines: rank 0 gets 0,2,4; rank 1 gets 1,3,5
    questions.write_text("\n".join(many) + "\n", encoding="utf-8")
    out = tmp_path / "a.jsonl"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # the venv's own, activated or not
    proc = subprocess.run([*torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "medgpt",
                           "chat", str(sft_run[0]), "--input", str(questions), "--output", str(out),
                           "--temperature", "0", "--repetition-penalty", "3", "--max-new-tokens", "12"],
                          capture_output=True, text=True, timeout=400, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 processes)" in proc.stdout
    rows = read_jsonl(out)
    expected = complete_batch(*sft_loaded[:2], _conversations(many), **GREEDY)
    assert [r["question"] for r in rows] == many
    assert [r["answer"] for r in rows] == [e.text for e in expected]


def test_chat_shows_tool_calls_and_reasoning(tmp_path, monkeypatch, capsys):
    """--tools reach the official Qwen3 template; a <tool_call> is shown as 'tool_call> name {arguments}', /tool
    answers it (rendered as the official template renders a role "tool" turn); <think> shows as [think]."""
    import io

    from scripted import scripted_model

    from medgpt.inference.chat import main

    model, tokenizer = scripted_model()
    monkeypatch.setattr("medgpt.inference.chat.load", lambda args: (model, tokenizer, {}))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    (tmp_path / "tools.json").write_text(json.dumps(tools), encoding="utf-8")
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    flags = ["--tools", str(tmp_path / "tools.json"), "--chat-template-kwargs", '{"enable_thinking": false}']

    model.say(call)
    assert main(["any", "--prompt", "Weather in Paris?", *flags]) == 0
    assert capsys.readouterr().out.strip() == 'tool_call> get_weather {"city": "Paris"}'
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    assert model.prompt == tokenizer.apply_chat_template(asked, tools=tools, add_generation_prompt=True,
                                                         enable_thinking=False, return_dict=True)["input_ids"]

    model.say("<think>\nIt is sunny.\n</think>\n\nSunny, 21 degrees.")
    assert main(["any", "--prompt", "Weather in Paris?"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "Sunny, 21 degrees." and "[think] It is sunny. [/think]" in captured.err

    model.say(call, "Sunny, 21 degrees.")
    monkeypatch.setattr("sys.stdin", io.StringIO('Weather in Paris?\n/tool {"temp": 21}\n/exit\n'))
    assert main(["any", *flags]) == 0
    out = capsys.readouterr().out
    assert 'tool_call> get_weather {"city": "Paris"}' in out and "assistant> Sunny, 21 degrees." in out
    history = asked + [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}'}]
    assert model.prompt == tokenizer.apply_chat_template(history, tools=tools, add_generation_prompt=True,
                                                         enable_thinking=False, return_dict=True)["input_ids"]


def test_chat_rejects_a_bad_tools_file_before_loading(tmp_path, capsys):
    from medgpt.inference.chat import main

    bad = tmp_path / "tools.json"
    bad.write_text('[{"type": "function", "function": {"description": "no name"}}]', encoding="utf-8")
    assert main(["no/such/model/anywhere", "--prompt", "hi", "--tools", str(bad)]) == 2
    assert f"--tools {bad}: tool 0 has no function name" in capsys.readouterr().err
    bad.write_text("[not json", encoding="utf-8")
    assert main(["no/such/model/anywhere", "--prompt", "hi", "--tools", str(bad)]) == 2
    assert "invalid JSON" in capsys.readouterr().err
