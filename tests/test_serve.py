"""The OpenAI-compatible server on 127.0.0.1, called with the official `openai` client (streaming and not)."""
from __future__ import annotations

import json
import threading
import time
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
