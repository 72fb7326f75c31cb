"""The OpenAI-compatible server on 127.0.0.1, called with the official `openai` client (streaming and not)."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import free_port

KEY = "test-key-123"
GREEDY = dict(temperature=0, max_tokens=12, extra_body={"repetition_penalty": 3.0})


def _start(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            return server, thread, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    raise RuntimeError("the server did not start")


@pytest.fixture(scope="module")
def server(sft_loaded):
    from medgpt.inference.serve import create_app

    model, tokenizer, _ = sft_loaded
    server, thread, url = _start(create_app(model, tokenizer, "medgpt-test", api_key=KEY, max_concurrency=1,
                                            max_waiting=1))
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def _client(url, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_models_health_and_key(server):
    import openai

    assert [m.id for m in _client(server).models.list().data] == ["medgpt-test"]
    with urllib.request.urlopen(f"{server}/health") as r:  # no key needed for the health check
        assert json.load(r)["status"] == "ok"
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()


def test_chat_completion_streaming_and_not_agree(server, sft_loaded):
    from medgpt.modeling.generate import complete_batch

    messages = [{"role": "system", "content": "你是医生"}, {"role": "user", "content": "头痛发热怎么办？"}]
    client = _client(server)
    done = client.chat.completions.create(model="medgpt-test", messages=messages, **GREEDY)
    expected = complete_batch(*sft_loaded[:2], [messages], temperature=0, max_new_tokens=12,
                              repetition_penalty=3.0)[0]
    assert done.choices[0].message.content == expected.text and expected.text
    assert done.choices[0].finish_reason == expected.finish_reason
    assert done.usage.completion_tokens == expected.completion_tokens
    assert done.usage.prompt_tokens == expected.prompt_tokens

    chunks = list(client.chat.completions.create(model="medgpt-test", messages=messages, stream=True, **GREEDY))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert len([p for p in pieces if p]) > 1  # arrived in several pieces
    assert "".join(pieces).strip() == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason == "length"  # max_tokens ended it


def test_bad_requests_get_4xx(server):
    import openai

    client = _client(server)
    ok = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="medgpt-test", messages=ok, temperature=7)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="medgpt-test", messages=[])
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="medgpt-test", messages=[{"role": "doctor", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="medgpt-test"):
        client.chat.completions.create(model="gpt-4o", messages=ok)


def test_concurrency_is_bounded(server):
    """One generation at a time and one waiting: of 5 simultaneous requests some are told 503, none is lost."""
    import openai

    client = _client(server)

    def ask(i):
        try:
            r = client.chat.completions.create(model="medgpt-test", max_tokens=128, temperature=0,
                                               messages=[{"role": "user", "content": f"问题 {i}"}])
            return r.choices[0].message.content is not None
        except openai.InternalServerError as e:
            return e.status_code

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(ask, range(5)))
    assert results.count(True) >= 2 and 503 in results, results
    assert set(results) <= {True, 503}
    with urllib.request.urlopen(f"{server}/health") as r:
        assert json.load(r) == {"status": "ok", "model": "medgpt-test", "running": 0, "waiting": 0}


# ---- tools, reasoning and hardening, against a model whose output the test writes (tests/scripted.py) ----

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city (a description only the tools list holds)",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NO_THINK = {"enable_thinking": False}  # the served folder's RUN_INFO default in these tests


@pytest.fixture(scope="module")
def scripted():
    from scripted import scripted_model

    from medgpt.inference.serve import create_app

    model, tokenizer = scripted_model()
    app = create_app(model, tokenizer, "scripted", api_key=KEY, max_concurrency=1, max_waiting=1,
                     info={"chat_template_kwargs": NO_THINK}, max_body_bytes=64 * 1024, max_messages=8, docs=True,
                     generation={"temperature": 0})  # greedy unless a request says otherwise (faster than top-p)
    server, thread, url = _start(app)
    yield url, model, tokenizer
    model.say("")
    server.should_exit = True
    thread.join(timeout=10)


def _health(url):
    with urllib.request.urlopen(f"{url}/health") as r:
        return json.load(r)


def _official(tokenizer, messages, tools=None, **kwargs):
    """What the official Qwen3 chat template renders for these messages (the prompt the model must see)."""
    return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                         return_dict=True, **{**NO_THINK, **kwargs})["input_ids"]


def test_tool_call_round_trip_with_the_openai_client(scripted):
    """tools reach the official template; the model's <tool_call> comes back as tool_calls; the assistant's call
    and the role "tool" result go back in and render as the official template renders them."""
    url, model, tokenizer = scripted
    client = _client(url)
    model.say(CALL)
    first = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS)
    assert model.prompt == _official(tokenizer, ASK, TOOLS)
    assert "a description only the tools list holds" in tokenizer.decode(model.prompt)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    model.say("It is 21 degrees and sunny in Paris.")
    conversation = ASK + [choice.message, {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    second = client.chat.completions.create(model="scripted", messages=conversation, tools=TOOLS)
    assert second.choices[0].message.content == "It is 21 degrees and sunny in Paris."
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    as_hf = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}'}]
    assert model.prompt == _official(tokenizer, as_hf, TOOLS)
    rendered = tokenizer.decode(model.prompt)
    assert CALL in rendered and "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response>" in rendered


def test_tool_calls_stream_and_bad_calls_stay_content(scripted):
    url, model, _ = scripted
    client = _client(url)
    model.say("Let me check. " + CALL)
    chunks = list(client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert content.strip() == "Let me check." and "<tool_call>" not in content
    assert [(t.index, t.function.name, json.loads(t.function.arguments)) for t in calls] == \
        [(0, "get_weather", {"city": "Paris"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}\n</tool_call>'
    model.say(broken)  # not JSON: plain content, status 200, never a 500
    done = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS)
    assert done.choices[0].message.content == broken and not done.choices[0].message.tool_calls
    assert done.choices[0].finish_reason == "stop"
    streamed = list(client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == broken
    model.say(CALL)  # tool_choice "none": the call is not parsed
    plain = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, tool_choice="none")
    assert plain.choices[0].message.content == CALL


def test_reasoning_content_and_chat_template_kwargs(scripted):
    """<think> comes back as reasoning_content, streaming and not; RUN_INFO's enable_thinking=false is the default
    and a request's chat_template_kwargs overrides it."""
    url, model, tokenizer = scripted
    client = _client(url)
    model.say("<think>\nThe patient has a headache.\n</think>\n\nDrink water and rest.")
    done = client.chat.completions.create(model="scripted", messages=ASK)
    assert tokenizer.decode(model.prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # default
    message = done.choices[0].message
    assert message.reasoning_content == "The patient has a headache."
    assert message.content == "Drink water and rest."
    chunks = list(client.chat.completions.create(model="scripted", messages=ASK, stream=True,
                                                 extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
    assert tokenizer.decode(model.prompt).endswith("<|im_start|>assistant\n")
    assert model.prompt == _official(tokenizer, ASK, enable_thinking=True)
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "The patient has a headache."
    assert "".join(d.content or "" for d in deltas).strip() == "Drink water and rest."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_length_stop_and_context_limits(scripted):
    import openai

    url, model, _ = scripted
    client = _client(url)
    model.say("Drink water. STOP and then a lot more text that must never be sent " * 3)
    cut = client.chat.completions.create(model="scripted", messages=ASK, max_tokens=4)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 4
    streamed = list(client.chat.completions.create(model="scripted", messages=ASK, max_tokens=4, stream=True,
                                                   stream_options={"include_usage": True}))
    assert streamed[-2].choices[0].finish_reason == "length"
    assert streamed[-1].choices == [] and streamed[-1].usage.completion_tokens == 4

    stopped = client.chat.completions.create(model="scripted", messages=ASK, stop=["STOP", "never"])
    assert stopped.choices[0].message.content == "Drink water." and stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < 10  # generation ended there, not at the script's end
    pieces = list(client.chat.completions.create(model="scripted", messages=ASK, stop="STOP", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in pieces).strip() == "Drink water."

    with pytest.raises(openai.BadRequestError) as e:  # 8192 positions; the prompt does not leave 8192
        client.chat.completions.create(model="scripted", messages=ASK, max_tokens=8192)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 8192" in str(e.value)
    with pytest.raises(openai.BadRequestError, match="no room for a completion") as e:
        client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "头痛 " * 9000}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="limit of 8"):
        client.chat.completions.create(model="scripted", messages=ASK * 9)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x" * 70_000}])
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="chat_template_kwargs"):
        client.chat.completions.create(model="scripted", messages=ASK, extra_body={"chat_template_kwargs": {
            "tokenize": False}})
    assert _health(url)["running"] == 0


def test_a_failed_generation_ends_with_an_error_not_a_cut_stream(scripted):
    import openai

    url, model, _ = scripted
    client = _client(url)
    model.say("Some words that will not all be written " * 4, fail_at=3)
    try:
        with pytest.raises(openai.APIError, match="failed on purpose"):
            list(client.chat.completions.create(model="scripted", messages=ASK, stream=True))
        with pytest.raises(openai.InternalServerError, match="failed on purpose"):
            client.chat.completions.create(model="scripted", messages=ASK)
    finally:
        model.say("")
    assert _health(url) == {"status": "ok", "model": "scripted", "running": 0, "waiting": 0}


def test_client_disconnect_stops_generation_and_frees_the_slot(scripted):
    """Mid-stream disconnect: the slot is free within a second and the model takes no further step; a request
    that leaves while queued leaves the queue."""
    import httpx

    url, model, _ = scripted
    model.say("word " * 400, delay=0.02)  # ~8 s if it ran to the end
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "scripted", "messages": ASK, "stream": True, "max_tokens": 400}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
            lines = r.iter_lines()
            assert sum(1 for line, _ in zip(lines, range(8)) if line.startswith("data:")) >= 3
            assert _health(url)["running"] == 1
            with pytest.raises(httpx.ReadTimeout):  # a second request waits in the queue, then gives up
                httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, headers=headers,
                           timeout=0.5)
        left = time.perf_counter()
        while _health(url) != {"status": "ok", "model": "scripted", "running": 0, "waiting": 0}:
            assert time.perf_counter() - left < 1.0, _health(url)
            time.sleep(0.02)
        steps = model.steps
        time.sleep(0.3)
        assert model.steps == steps < 100  # generation stopped, long before the script's end
    finally:
        model.say("")


def test_template_runs_off_the_event_loop(scripted, monkeypatch):
    """A slow chat template (a long conversation) must not stall the server: /health answers meanwhile."""
    url, model, tokenizer = scripted
    original = tokenizer.apply_chat_template

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", slow)
    model.say("ok")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_client(url).chat.completions.create, model="scripted", messages=ASK)
        time.sleep(0.3)
        start = time.perf_counter()
        _health(url)
        assert time.perf_counter() - start < 0.5
        assert pending.result().choices[0].message.content == "ok"


def test_docs_behind_the_key_or_off(scripted, server):
    def status(url, path, key=None):
        request = urllib.request.Request(f"{url}{path}", headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    url = scripted[0]
    assert [status(url, p) for p in ("/docs", "/openapi.json")] == [401, 401]
    assert [status(url, p, KEY) for p in ("/docs", "/openapi.json")] == [200, 200]
    assert [status(server, p, KEY) for p in ("/docs", "/openapi.json")] == [404, 404]  # off by default


def test_serve_takes_chat_template_kwargs_from_run_info(tmp_path, monkeypatch):
    """`medgpt serve <folder>`: the folder's RUN_INFO chat_template_kwargs are the default, --chat-template-kwargs
    goes over them (and a request's over both: test_reasoning_content_and_chat_template_kwargs)."""
    from conftest import official

    from medgpt.inference.serve import main
    from medgpt.runs import write_run_info

    folder = tmp_path / "model"
    folder.mkdir()
    for f in official("qwen3", model=True).iterdir():
        (folder / f.name).symlink_to(f)
    write_run_info(folder, {"chat_template_kwargs": {"enable_thinking": False}})
    apps = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: apps.append(app))
    assert main([str(folder), "--chat-template-kwargs", '{"custom": 1}']) == 0
    (replier,) = [a.replier for a in apps]
    assert replier.template_kwargs == {"enable_thinking": False, "custom": 1}
    assert replier.tokenizer.decode(replier.render(ASK)).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert replier.tool_format == "hermes" and replier.context == 8192
    assert main([str(folder), "--chat-template-kwargs", '{"tokenize": true}']) == 2  # refused before loading
    assert len(apps) == 1
