"""OpenAI-compatible HTTP server: /v1/chat/completions (SSE streaming or not), /v1/models, /health.

    medgpt serve outputs/runs/sft-tiny-cpu/<stamp> --port 8000 [--api-key KEY | env MEDGPT_API_KEY]
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY").chat.completions.create(model=..., ...)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import threading
import time
import uuid
from typing import List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from medgpt.errors import command
from medgpt.inference.chat import add_model_args, load, with_system
from medgpt.modeling.generate import complete_batch, prompt_ids, stream


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, List[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    """The subset of OpenAI's request that a local model honours; other OpenAI fields are accepted, ignored."""
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    messages: List[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: Optional[int] = Field(None, ge=1, le=8192)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=8192)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)
    n: int = Field(1, ge=1, le=1)


def _error(status: int, message: str, kind: str, param: Optional[str] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


def create_app(model, tokenizer, model_name: str, *, api_key: Optional[str] = None, max_concurrency: int = 2,
               max_waiting: int = 32, system: Optional[str] = None):
    """The FastAPI app. At most max_concurrency generations run at once; beyond max_waiting queued -> 503.
    `system` is the system prompt for requests that send none."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    app = FastAPI(title="medgpt", version="1")
    slots = asyncio.Semaphore(max_concurrency)
    load = {"running": 0, "waiting": 0}

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):  # OpenAI answers bad requests with 400, not FastAPI's 422
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error(400, f"{where}: {first['msg']}", "invalid_request_error", where or None)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                              "authentication_error")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **load}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "medgpt"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        if body.model and body.model != model_name:
            return _error(404, f"model '{body.model}' is not served here; use '{model_name}' (GET /v1/models)",
                          "invalid_request_error", "model")
        if load["waiting"] >= max_waiting:
            return _error(503, "server busy: too many requests waiting; retry later", "server_error")
        messages = with_system(system, [{"role": m.role, "content": m.text()} for m in body.messages])
        gen = dict(max_new_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature,
                   top_p=body.top_p, repetition_penalty=body.repetition_penalty)
        try:
            n_prompt = len(prompt_ids(tokenizer, messages))
        except Exception as e:  # the chat template rejects the turn order
            return _error(400, f"messages: {e}", "invalid_request_error", "messages")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        load["waiting"] += 1
        await slots.acquire()
        load["waiting"] -= 1
        load["running"] += 1

        def release():
            load["running"] -= 1
            slots.release()

        if not body.stream:
            try:
                done = (await run_in_threadpool(complete_batch, model, tokenizer, [messages], **gen))[0]
            finally:
                release()
            return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                                 "finish_reason": done.finish_reason}],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": done.completion_tokens,
                              "total_tokens": n_prompt + done.completion_tokens}}

        def chunk(delta: dict, finish: Optional[str] = None) -> str:
            payload = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events():
            cancel = threading.Event()
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for piece in iterate_in_threadpool(stream(model, tokenizer, messages, stop_event=cancel,
                                                                **gen)):
                    yield chunk({"content": piece})
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"
            finally:  # also when the client disconnects: stop generating, free the slot
                cancel.set()
                release()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def parse_args(argv=None):

    parser = argparse.ArgumentParser(prog="medgpt serve", description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("MEDGPT_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: env MEDGPT_API_KEY; none = open)")
    parser.add_argument("--model-name", help="id shown in /v1/models (default: the run's model name)")
    parser.add_argument("--max-concurrency", type=int, default=2, help="generations running at once")
    parser.add_argument("--max-waiting", type=int, default=32, help="queued requests before answering 503")
    return parser.parse_args(argv)


@command
def main(argv=None) -> int:
    import uvicorn

    args = parse_args(argv)
    model, tokenizer, info = load(args)
    name = args.model_name or f"medgpt-{info.get('stage', 'model')}-{info.get('model', 'custom')}"
    app = create_app(model, tokenizer, name, api_key=args.api_key, max_concurrency=args.max_concurrency,
                     max_waiting=args.max_waiting, system=args.system)
    print(f"serving {name} on http://{args.host}:{args.port}/v1 (key {'required' if args.api_key else 'off'})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
