"""OpenAI-compatible HTTP server: /v1/chat/completions (SSE streaming or not; tools, reasoning), /v1/models, /health.

    medgpt serve outputs/runs/sft-tiny-cpu/<stamp> --port 8000 [--api-key KEY | env MEDGPT_API_KEY]
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY").chat.completions.create(model=..., ...)
"""
import argparse
import asyncio
import json
import logging
import os
import secrets
import threading
import time
import uuid
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from medgpt.errors import UserError, command
from medgpt.inference.chat import add_model_args, generation_overrides, load, with_system
from medgpt.inference.replies import ContextTooLong, Replier, check_template_kwargs

log = logging.getLogger(__name__)
LIMITS = dict(max_body_bytes=2 * 1024 * 1024, max_messages=256)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, List[TextPart], None] = None
    tool_calls: Optional[List[ToolCall]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_template(self) -> dict:
        """The message as Hugging Face chat templates take it (tool-call arguments as objects when they parse)."""
        out: Dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            calls = []
            for call in self.tool_calls:
                try:
                    arguments = json.loads(call.function.arguments)
                except ValueError:
                    arguments = call.function.arguments
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": arguments}})
            out["tool_calls"] = calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        return out


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: Dict[str, Any]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of OpenAI's request that a local model honours; other OpenAI fields are accepted, ignored."""
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    messages: List[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)
    n: int = Field(1, ge=1, le=1)
    stop: Union[str, List[str], None] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Union[str, Dict[str, Any], None] = None
    chat_template_kwargs: Optional[Dict[str, Any]] = None


def _error(status: int, message: str, kind: str, param: Optional[str] = None, code: Optional[str] = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


class Gate:
    """Pure ASGI middleware: the API key on every path but /health, and a bound on request bodies (413).
    The body is read here, counted, and replayed; later receive() calls (the disconnect) pass straight through."""

    def __init__(self, app, api_key: Optional[str], max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def _refuse(self, send, status: int, message: str, kind: str):
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                return await self._refuse(send, 401, "invalid or missing API key (send Authorization: Bearer "
                                                     "<key>)", "authentication_error")
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = f"request body over {self.max_body_bytes} bytes (serve --max-body-bytes)"
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._refuse(send, 413, too_big, "invalid_request_error")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending the body
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await self._refuse(send, 413, too_big, "invalid_request_error")
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _stream_class():
    from fastapi.responses import StreamingResponse

    class Stream(StreamingResponse):
        """Calls on_close however the response ends: also when the client leaves before the first chunk (then the
        body generator never starts, so its own finally never runs)."""

        def __init__(self, content, *, on_close, **kwargs):
            super().__init__(content, **kwargs)
            self.on_close = on_close

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.on_close()

    return Stream


async def _disconnected(receive) -> None:
    """Returns when the client has gone (the ASGI server reports http.disconnect, or receiving fails)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a broken connection is a gone client too
        return


def _watch(receive, cancel: threading.Event):
    """A task that sets `cancel` when the client goes; cancel the task when the answer is complete."""
    task = asyncio.ensure_future(_disconnected(receive))
    task.add_done_callback(lambda t: t.cancelled() or cancel.set())
    return task


def create_app(model, tokenizer, model_name: str, *, api_key: Optional[str] = None, max_concurrency: int = 2,
               max_waiting: int = 32, system: Optional[str] = None, info: Optional[dict] = None,
               chat_template_kwargs: Optional[dict] = None, max_model_len: Optional[int] = None,
               max_body_bytes: int = LIMITS["max_body_bytes"], max_messages: int = LIMITS["max_messages"],
               docs: bool = False, generation: Optional[dict] = None):
    """The ASGI app. At most max_concurrency generations run at once; beyond max_waiting queued -> 503.
    `system` is the system prompt for requests that send none; `info` is the model folder's RUN_INFO (its
    template and chat_template_kwargs); chat_template_kwargs override those defaults (a request's own
    `chat_template_kwargs` override both). docs: serve /docs and /openapi.json (behind the key).
    generation: defaults (max_new_tokens, temperature, top_p, repetition_penalty) for what a request leaves out,
    over final/generation_config.json."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    Stream = _stream_class()
    defaults = {k: v for k, v in (generation or {}).items() if v is not None}
    replier = Replier(model, tokenizer, info, chat_template_kwargs=chat_template_kwargs,
                      max_model_len=max_model_len)
    app = FastAPI(title="medgpt", version="1", docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    slots = asyncio.Semaphore(max_concurrency)
    load = {"running": 0, "waiting": 0}

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):  # OpenAI answers bad requests with 400, not FastAPI's 422
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error(400, f"{where}: {first['msg']}", "invalid_request_error", where or None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **load}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "medgpt", "max_model_len": replier.context}]}

    async def take_slot(request: Request) -> bool:
        """Wait for a generation slot; False when the client left while waiting (it leaves the queue)."""
        load["waiting"] += 1
        acquire = asyncio.ensure_future(slots.acquire())
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            load["waiting"] -= 1
            gone.cancel()
            if not acquire.done():
                acquire.cancel()
                try:
                    await acquire
                except asyncio.CancelledError:
                    pass
        if acquire.cancelled():
            return False
        load["running"] += 1
        return True

    def release():
        load["running"] -= 1
        slots.release()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if body.model and body.model != model_name:
            return _error(404, f"model '{body.model}' is not served here; use '{model_name}' (GET /v1/models)",
                          "invalid_request_error", "model")
        if len(body.messages) > max_messages:
            return _error(400, f"messages: {len(body.messages)} messages, over this server's limit of "
                               f"{max_messages} (serve --max-messages)", "invalid_request_error", "messages")
        choice = body.tool_choice
        if choice not in (None, "auto", "none"):
            return _error(400, "tool_choice: only 'auto' and 'none' are supported (no constrained decoding here)",
                          "invalid_request_error", "tool_choice")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            return _error(400, "stop: at most 4 sequences", "invalid_request_error", "stop")
        tools = [t.model_dump() for t in body.tools] if body.tools else None
        parse_tools = tools if tools and choice != "none" else None  # the schemas: typed arguments
        messages = with_system(system, [m.for_template() for m in body.messages])
        try:
            template_kwargs = check_template_kwargs(body.chat_template_kwargs or {})
            # the template runs off the event loop: a long conversation must not stall other requests
            ids = await run_in_threadpool(replier.render, messages, tools, template_kwargs)
        except Exception as e:  # the chat template rejects the turn order, or a template variable
            return _error(400, f"messages: {e}", "invalid_request_error", "messages")
        n_prompt = len(ids)
        try:
            budget = replier.budget(n_prompt, body.max_completion_tokens or body.max_tokens,
                                    defaults.get("max_new_tokens"))
        except ContextTooLong as e:
            return _error(400, str(e), "invalid_request_error", "messages", "context_length_exceeded")
        if load["running"] >= max_concurrency and load["waiting"] >= max_waiting:
            return _error(503, "server busy: too many requests waiting; retry later", "server_error")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        gen_args = {k: v if v is not None else defaults.get(k) for k, v in dict(
            temperature=body.temperature, top_p=body.top_p, repetition_penalty=body.repetition_penalty).items()}
        if not await take_slot(request):
            return _error(499, "client closed the request", "invalid_request_error")
        cancel, released = threading.Event(), []

        def close():  # idempotent: the stream's end, the response's end, or a failure before either
            cancel.set()
            if not released:
                released.append(True)
                release()

        try:
            generation = replier.generation(ids, max_new_tokens=budget, stop=stops, cancel=cancel, **gen_args)
            splitter = replier.splitter(ids, parse_tools)
        except Exception:
            close()
            raise

        def usage():
            done = generation.completion_tokens
            return {"prompt_tokens": n_prompt, "completion_tokens": done, "total_tokens": n_prompt + done}

        if not body.stream:
            watcher = _watch(request.receive, cancel)
            try:
                text = await run_in_threadpool(lambda: "".join(generation))
            except Exception as e:
                log.exception("generation failed")
                return _error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
            finally:
                watcher.cancel()
                close()
            try:
                reasoning, content, calls = splitter.split(text)
            except Exception:  # a parser bug must not cost the answer: the text as it came
                log.exception("could not split the reply")
                reasoning, content, calls = None, text.strip(), []
            message: Dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
            if reasoning is not None:
                message["reasoning_content"] = reasoning
            if calls:
                message["tool_calls"] = calls
            return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if calls else generation.finish_reason}],
                    "usage": usage()}

        def chunk(delta: dict, finish: Optional[str] = None) -> str:
            payload = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events():
            watcher = _watch(request.receive, cancel)
            try:
                yield chunk({"role": "assistant", "content": ""})
                try:
                    async for piece in iterate_in_threadpool(iter(generation)):
                        for delta in splitter.feed(piece):
                            yield chunk(delta)
                except Exception as e:  # an error event, then the end: never a stream cut without a word
                    log.exception("generation failed")
                    error = {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                             "param": None, "code": None}
                    yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                rest, calls = splitter.finish()
                for delta in rest:
                    yield chunk(delta)
                if calls:
                    yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
                yield chunk({}, "tool_calls" if calls else generation.finish_reason)
                if body.stream_options and body.stream_options.include_usage:
                    final = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                             "choices": [], "usage": usage()}
                    yield f"data: {json.dumps(final)}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # also when the client disconnects: stop generating, free the slot
                watcher.cancel()
                close()

        return Stream(events(), on_close=close, media_type="text/event-stream")

    gate = Gate(app, api_key, max_body_bytes)
    gate.replier = replier  # what the server answers with (its template variables, tool format, context)
    return gate


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
    parser.add_argument("--max-model-len", type=int, help="context limit for prompt + max_tokens (default: the "
                                                           "model's max_position_embeddings)")
    parser.add_argument("--max-body-bytes", type=int, default=LIMITS["max_body_bytes"],
                        help="larger request bodies get 413")
    parser.add_argument("--max-messages", type=int, default=LIMITS["max_messages"],
                        help="more messages in one request get 400")
    parser.add_argument("--chat-template-kwargs", type=json.loads, default=None,
                        help='template variables for every request, over the run\'s own (RUN_INFO), e.g. '
                             '\'{"enable_thinking": false}\'; a request\'s chat_template_kwargs override them')
    parser.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (behind the key)")
    args = parser.parse_args(argv)
    for name in ("max_concurrency", "max_waiting", "max_body_bytes", "max_messages"):
        if getattr(args, name) < (0 if name == "max_waiting" else 1):
            parser.error(f"--{name.replace('_', '-')} is too small")
    return args


@command
def main(argv=None) -> int:
    import uvicorn

    args = parse_args(argv)
    try:
        check_template_kwargs(args.chat_template_kwargs or {})
    except ValueError as e:
        raise UserError(f"--chat-template-kwargs: {e}") from None
    model, tokenizer, info = load(args)
    info = {**info, "template": args.template or info.get("template")}  # --template decides the tool format
    name = args.model_name or f"medgpt-{info.get('stage', 'model')}-{info.get('model', 'custom')}"
    app = create_app(model, tokenizer, name, api_key=args.api_key, max_concurrency=args.max_concurrency,
                     max_waiting=args.max_waiting, system=args.system, info=info,
                     chat_template_kwargs=args.chat_template_kwargs, max_model_len=args.max_model_len,
                     max_body_bytes=args.max_body_bytes, max_messages=args.max_messages, docs=args.docs,
                     generation=generation_overrides(args))
    print(f"serving {name} on http://{args.host}:{args.port}/v1 (key {'required' if args.api_key else 'off'})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
