"""The OpenAI-compatible FastAPI application over an llm-infer ``Engine``.

``create_app(llm, ServerConfig(...))`` builds the app; its lifespan starts the engine on the
server's event loop. Routes: ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (SSE with ``"stream": true``), ``POST /v1/embeddings``,
``POST /tokenize``, ``POST /detokenize``, ``GET /health`` and ``GET /metrics``.

Every error is answered in OpenAI's shape (:mod:`llm_serve.errors`). A streamed request whose
client disconnects is cancelled: Starlette cancels the response's generator, whose ``finally``
cancels the engine requests, which leave the batch at the end of the current step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from llm_infer import (
    LLM,
    Completion,
    ContextLengthError,
    EngineBusyError,
    EngineClosedError,
    SamplingError,
    TokenLogprob,
)
from llm_infer.engine import Engine, RequestHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serve.errors import APIError, error_body
from llm_serve.metrics import Metrics
from llm_serve.protocols import HiddenStatesModel
from llm_serve.schemas import (
    MAX_N,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    NamedToolChoice,
    TokenizeRequest,
    _Sampling,
)
from llm_serve.tools import (
    ParsedToolCall,
    ToolCallParser,
    render_tool_calls,
    reply_prefix,
    tools_prompt,
)

ROUTES = (
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
    "/health",
    "/metrics",
)
OPEN_ROUTES = ("/health",)  # answered without the API key
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
)


@dataclass(frozen=True)
class ServerConfig:
    """How the server runs.

    ``model_name`` is the id clients name in ``model``; ``api_key`` (None: no auth) is checked
    as ``Authorization: Bearer <key>`` on every route but ``/health``; bodies above
    ``max_body_bytes`` get a 413 and ``max_tokens`` above ``max_tokens_cap`` a 400; a request
    that omits ``max_tokens`` may run to the end of the context, within the cap. CORS is on
    only for ``cors_origins``. ``max_batch`` and ``max_queue`` size the engine; a full queue is
    answered 503 with ``Retry-After: retry_after_s``.
    """

    model_name: str
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_tokens_cap: int = 4096
    cors_origins: tuple[str, ...] = ()
    retry_after_s: int = 1


def create_app(llm: LLM, config: ServerConfig) -> FastAPI:
    """The FastAPI app serving ``llm`` under ``config.model_name``.

    The engine starts with the app's lifespan (uvicorn runs it); ``app.state.server`` is the
    :class:`Server` behind the routes (its ``engine`` while running, and ``metrics``).
    """
    server = Server(llm, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.running():
            yield

    app = FastAPI(title="llm-serve", version="0.1.0", lifespan=lifespan)
    app.state.server = server
    _add_error_handlers(app)
    _add_routes(app, server)
    app.add_middleware(Guard, config=config, metrics=server.metrics)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


# -- middleware: request counts, auth, body size ----------------------------------------------


class Guard:
    """Counts requests, checks the API key and caps the body size, before the app sees them.

    The body is read here (up to ``max_body_bytes``) and replayed to the app, so a chunked
    upload cannot slip past the cap; an over-long one is answered 413 at once.
    """

    def __init__(self, app: ASGIApp, *, config: ServerConfig, metrics: Metrics) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.expected = f"Bearer {config.api_key}".encode() if config.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counting_send)
        finally:
            self.metrics.count_request(route, status)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in OPEN_ROUTES:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = (
                    "Incorrect API key provided."
                    if given
                    else "Missing API key: send 'Authorization: Bearer <key>'."
                )
                await _send_error(send, APIError(401, message, code="invalid_api_key"))
                return
        limit = self.config.max_body_bytes
        too_large = APIError(
            413, f"request body too large: the limit is {limit} bytes", code="request_too_large"
        )
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            await _send_error(
                send, too_large if length.isdigit() else APIError(400, "bad Content-Length")
            )
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _send_error(send, too_large)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Send, error: APIError) -> None:
    response = error.response()
    await send(
        {"type": "http.response.start", "status": error.status, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if _field_part(part)]
        param = ".".join(loc) or None
        where = f"{param}: " if param else ""
        message = f"{where}{first.get('msg', 'invalid value')}"
        if first.get("type") == "json_invalid":
            message, param = f"the body is not valid JSON ({first.get('msg')})", None
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "Not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(
            error_body(exc.status_code, f"{message}: {request.method} {request.url.path}"),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(500, f"internal error: {type(exc).__name__}: {exc}"), status_code=500
        )


def _field_part(part: str | int) -> bool:
    """Whether a pydantic error location part names a field or an index (not a union member)."""
    if isinstance(part, int):
        return True
    return part != "body" and part.isidentifier() and part[0].islower() and part not in TYPE_TAGS


TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


# -- the server's state and the request plumbing ---------------------------------------------


class Server:
    """The model, its engine and the counters behind the routes."""

    def __init__(self, llm: LLM, config: ServerConfig) -> None:
        self.llm = llm
        self.config = config
        self.metrics = Metrics()
        self.created = int(time.time())
        self.engine: Engine | None = None
        self.embed_executor: ThreadPoolExecutor | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the engine (and the embedding thread) for the duration of the block."""
        engine = self.llm.engine(max_batch=self.config.max_batch, max_queue=self.config.max_queue)
        self.embed_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llm-serve-embed"
        )
        try:
            async with engine:
                self.engine = engine
                yield
        finally:
            self.engine = None
            self.embed_executor.shutdown(wait=True)

    @property
    def context_length(self) -> int:
        return self.llm.context_length

    def check_model(self, model: str | None) -> None:
        """Raise a 404 ``model_not_found`` unless ``model`` is the served one (or omitted)."""
        if model is not None and model != self.config.model_name:
            raise APIError(
                404,
                f"The model `{model}` does not exist; this server serves `{self.config.model_name}`.",
                param="model",
                code="model_not_found",
            )

    def encode(self, prompt: str | Sequence[int], param: str) -> list[int]:
        """Checked token ids of a text or ids prompt; raises a 400 naming ``param``."""
        try:
            return self.llm.encode_prompt(prompt)
        except ValueError as exc:
            raise APIError(400, str(exc), param=param, code="invalid_value") from None

    def sampling(
        self, body: _Sampling, prompt_tokens: int, max_tokens: int | None, **extra: Any
    ) -> dict[str, Any]:
        """llm-infer sampling keywords for ``body``, validated (raises a 400 naming the field).

        Without ``max_tokens``, the reply may fill the context left, within the server's cap.
        """
        cap = self.config.max_tokens_cap
        if max_tokens is not None and max_tokens > cap:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}, above this server's cap of {cap}",
                param="max_tokens",
                code="invalid_value",
            )
        if max_tokens is None:
            max_tokens = max(1, min(cap, self.context_length - prompt_tokens))
        params: dict[str, Any] = {"max_tokens": max_tokens, **extra}
        params.update(
            {k: getattr(body, k) for k in SAMPLING_FIELDS if getattr(body, k) is not None}
        )
        if body.logit_bias:
            try:
                params["logit_bias"] = {int(k): v for k, v in body.logit_bias.items()}
            except ValueError:
                raise APIError(
                    400, "logit_bias keys must be token ids (integers)", param="logit_bias"
                ) from None
        with translate_errors("prompt"):
            self.llm.sampling_params(**params)
        return params

    def submit(
        self,
        prompts: Sequence[list[int]],
        params: dict[str, Any],
        n: int,
        seed: int | None,
        param: str,
    ) -> list[RequestHandle]:
        """Submit ``n`` choices of each prompt (choice ``i`` seeded ``seed + i``).

        All or none: when one cannot be queued, those already queued are cancelled. Raises
        400 (context length), 503 (queue full, or not running).
        """
        if len(prompts) * n > MAX_N:
            raise APIError(
                400,
                f"{len(prompts)} prompts x n={n} is {len(prompts) * n} choices; the limit is {MAX_N}",
                param="n",
            )
        if self.engine is None:
            raise APIError(503, "the engine is not running", code="engine_not_running")
        handles: list[RequestHandle] = []
        try:
            with translate_errors(param, retry_after=self.config.retry_after_s):
                for ids in prompts:
                    for i in range(n):
                        choice_seed = None if seed is None else _wrap_seed(seed + i)
                        handles.append(self.engine.submit(ids, **params, seed=choice_seed))
        except APIError:
            for handle in handles:
                handle.cancel()
            raise
        return handles

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The chat template applied to ``messages``; a template error is a 400."""
        try:
            return self.llm.chat_prompt(messages)
        except ValueError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None

    def token_text(self, token_id: int) -> str:
        return self.llm.tokenizer.decode([token_id])


def _wrap_seed(seed: int) -> int:
    """``seed`` folded into the signed 64-bit range."""
    return (seed + 2**63) % 2**64 - 2**63


@contextlib.contextmanager
def translate_errors(param: str, *, retry_after: int = 1) -> Iterator[None]:
    """llm-infer's errors as API errors: bad values and over-long prompts 400, a full queue 503."""
    try:
        yield
    except ContextLengthError as exc:
        raise APIError(400, str(exc), param=param, code="context_length_exceeded") from None
    except SamplingError as exc:
        name = str(exc).split(" ", 1)[0]
        raise APIError(
            400, str(exc), param=name if name.isidentifier() else None, code="invalid_value"
        ) from None
    except EngineBusyError as exc:
        raise APIError(
            503, str(exc), code="server_busy", headers={"Retry-After": str(retry_after)}
        ) from None
    except EngineClosedError as exc:
        raise APIError(503, str(exc), code="engine_not_running") from None
    except ValueError as exc:
        raise APIError(400, str(exc), param=param, code="invalid_value") from None


async def wait_all(handles: list[RequestHandle], request: Request) -> list[Completion] | None:
    """The completions of ``handles``; None (and every handle cancelled) if the client leaves."""

    async def client_left() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    results = asyncio.ensure_future(asyncio.gather(*(h.result() for h in handles)))
    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({results, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not results.done():  # the client left (or the server stops): free the slots
            for handle in handles:
                handle.cancel()
    return results.result() if results.done() else None


async def merged(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, str | Completion]]:
    """``(choice index, text delta or final Completion)`` from every handle, as they come.

    Leaving early cancels every handle.
    """
    queue: asyncio.Queue[tuple[int, str | Completion | BaseException]] = asyncio.Queue()

    async def pump(index: int, handle: RequestHandle) -> None:
        try:
            async for delta in handle:
                queue.put_nowait((index, delta))
            queue.put_nowait((index, await handle.result()))
        except Exception as exc:  # an engine step failed: the stream reports it
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Completion):
                left -= 1
            yield index, item
    finally:
        for handle in handles:
            handle.cancel()
        for task in tasks:
            task.cancel()


def sse(data: dict[str, Any] | str) -> str:
    """One Server-Sent Events frame."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def usage_of(completions: Sequence[Completion], n: int) -> dict[str, Any]:
    """OpenAI's usage: each prompt counted once (not once per choice), every choice's tokens."""
    prompt = sum(c.usage.prompt_tokens for c in completions[::n])
    cached = sum(c.usage.cached_tokens for c in completions[::n])
    generated = sum(c.usage.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def reported_logprobs(server: Server, completion: Completion) -> list[TokenLogprob]:
    """The logprobs of the reply's tokens (an end-of-sequence token is not part of the reply)."""
    logprobs = list(completion.logprobs or ())
    eos = set(server.llm.tokenizer.eos_token_ids)
    if logprobs and completion.finish_reason == "stop" and logprobs[-1].token_id in eos:
        logprobs.pop()
    return logprobs


def chat_logprobs(server: Server, completion: Completion) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = server.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {
                **entry(lp.token_id, lp.logprob),
                "top_logprobs": [entry(t, v) for t, v in lp.top_logprobs.items()],
            }
            for lp in reported_logprobs(server, completion)
        ],
        "refusal": None,
    }


def completion_logprobs(server: Server, completion: Completion) -> dict[str, Any]:
    """``choices[].logprobs`` of a (legacy) text completion."""
    tokens, offsets, offset = [], [], 0
    logprobs = reported_logprobs(server, completion)
    for lp in logprobs:
        tokens.append(server.token_text(lp.token_id))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [
            {server.token_text(t): v for t, v in lp.top_logprobs.items()} for lp in logprobs
        ],
        "text_offset": offsets,
    }


def chat_messages(body: ChatCompletionRequest, with_tools: bool) -> list[dict[str, Any]]:
    """The messages as the chat template takes them: text content, ``developer`` as ``system``,
    earlier tool calls written out, and the tools described in the system message."""
    messages = [_template_message(m) for m in body.messages]
    if with_tools and body.tools:
        section = tools_prompt(body.tools)
        if messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{section}"
        else:
            messages.insert(0, {"role": "system", "content": section})
    return messages


def _template_message(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    content = content or ""
    if message.tool_calls:
        content = "\n".join(filter(None, (content, render_tool_calls(message))))
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": content}


# -- routes -----------------------------------------------------------------------------------


def _add_routes(app: FastAPI, server: Server) -> None:
    name = server.config.model_name

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": server.created, "owned_by": "llm"}

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the engine runs, 503 otherwise."""
        if server.engine is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text: requests, tokens, queue depth, time to first token, prefix-cache hits."""
        stats = server.engine.stats() if server.engine is not None else None
        return PlainTextResponse(
            server.metrics.render(stats), media_type="text/plain; version=0.0.4"
        )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def get_model(model: str) -> dict[str, Any]:
        server.check_model(model)
        return model_card()

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        server.check_model(body.model)
        texts_or_ids = _batch(body.prompt)
        if not texts_or_ids:
            raise APIError(400, "prompt is empty", param="prompt")
        prompts = [server.encode(p, "prompt") for p in texts_or_ids]
        extra = (
            {"logprobs": True, "top_logprobs": body.logprobs} if body.logprobs is not None else {}
        )
        params = server.sampling(body, max(map(len, prompts)), body.max_tokens, **extra)
        handles = server.submit(prompts, params, body.n, body.seed, "prompt")
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": name}
        if body.stream:
            return _event_stream(completion_events(server, body, handles, base))
        done = await wait_all(handles, request)
        if done is None:
            return JSONResponse({}, status_code=499)
        return {
            **base,
            "choices": [
                {
                    "index": i,
                    "text": c.text,
                    "logprobs": completion_logprobs(server, c)
                    if body.logprobs is not None
                    else None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(done)
            ],
            "usage": usage_of(done, body.n),
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        server.check_model(body.model)
        with_tools = _check_tools(body)
        prefix = reply_prefix(body.tool_choice) if with_tools else ""
        prompt = server.render_chat(chat_messages(body, with_tools)) + prefix
        ids = server.encode(prompt, "messages")
        extra = {"logprobs": True, "top_logprobs": body.top_logprobs or 0} if body.logprobs else {}
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        params = server.sampling(
            body, len(ids), body.max_completion_tokens or body.max_tokens, **extra
        )
        handles = server.submit([ids], params, body.n, body.seed, "messages")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "created": created, "model": name, "system_fingerprint": None}
        if body.stream:
            events = chat_events(server, body, handles, base, with_tools, prefix)
            return _event_stream(events)
        done = await wait_all(handles, request)
        if done is None:
            return JSONResponse({}, status_code=499)
        choices = []
        for i, c in enumerate(done):
            content, calls = (
                _split_reply(prefix + c.text, body.parallel_tool_calls)
                if with_tools
                else (c.text, [])
            )
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if calls:
                message["tool_calls"] = [call.openai() for call in calls]
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": chat_logprobs(server, c) if body.logprobs else None,
                    "finish_reason": "tool_calls" if calls else c.finish_reason,
                }
            )
        return {
            **base,
            "object": "chat.completion",
            "choices": choices,
            "usage": usage_of(done, body.n),
        }

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        """Mean-pooled final hidden states, one vector per input (float or base64 float32)."""
        server.check_model(body.model)
        model = server.llm.model
        if not isinstance(model, HiddenStatesModel):
            raise APIError(400, "this model does not expose hidden states for embeddings")
        items = _batch(body.input)
        if not items or len(items) > 2048:
            raise APIError(400, "input must hold 1 to 2048 items", param="input")
        width = getattr(model.config, "n_embd", None)  # type: ignore[attr-defined]
        if body.dimensions is not None and body.dimensions != width:
            raise APIError(
                400, f"dimensions must be this model's {width} (no truncation)", param="dimensions"
            )
        ids = [server.encode(item, "input") for item in items]
        for i, seq in enumerate(ids):
            if len(seq) > server.context_length:
                raise APIError(
                    400,
                    f"input {i} has {len(seq)} tokens; the model's context holds {server.context_length}",
                    param="input",
                    code="context_length_exceeded",
                )
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(server.embed_executor, _mean_pool, model, ids)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
                if body.encoding_format == "base64"
                else v,
            }
            for i, v in enumerate(vectors)
        ]
        tokens = sum(map(len, ids))
        return {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """Token ids of ``prompt``, or of ``messages`` through the chat template."""
        server.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if body.messages is not None:
            messages = [_template_message(m) for m in body.messages]
            try:
                text = server.llm.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=body.add_generation_prompt
                )
            except ValueError as exc:
                raise APIError(400, f"messages: {exc}", param="messages") from None
        else:
            text = body.prompt or ""
        tokens = server.llm.tokenizer.encode(text)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": server.context_length}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        """The text of ``tokens``; an id outside the vocabulary is a 400."""
        server.check_model(body.model)
        vocab = server.llm.vocab_size
        bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(
                400, f"token id {bad} is outside the vocabulary [0, {vocab})", param="tokens"
            )
        return {"prompt": server.llm.tokenizer.decode(body.tokens)}


def _batch(raw: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """A ``prompt`` or ``input`` field as a list of texts or id lists (one item unless a batch)."""
    if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
        return [raw]  # type: ignore[list-item]
    return list(raw)  # type: ignore[arg-type]


def _check_tools(body: ChatCompletionRequest) -> bool:
    """Whether tools are offered to the model; raises a 400 for an inconsistent ``tool_choice``."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return False
    if isinstance(choice, NamedToolChoice):
        names = [t.function.name for t in body.tools]
        if choice.function.name not in names:
            raise APIError(
                400,
                f"tool_choice names {choice.function.name!r}, which is not among the tools {names}",
                param="tool_choice",
            )
    return choice != "none"


def _split_reply(text: str, parallel: bool) -> tuple[str | None, list[ParsedToolCall]]:
    parser = ToolCallParser()
    content, calls = parser.push(text)
    content += parser.finish()
    if not calls:
        return content, []
    return (content.strip() or None), (calls if parallel else calls[:1])


@torch.inference_mode()
def _mean_pool(model: HiddenStatesModel, ids: list[list[int]]) -> list[list[float]]:
    device = getattr(model, "device", None)
    vectors = []
    for seq in ids:
        tokens = torch.tensor([seq], device=device)  # (1, T)
        hidden = model.hidden_states(tokens)  # (1, T, C)
        vectors.append(hidden[0].float().mean(dim=0).tolist())  # (C,)
    return vectors


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def chat_events(
    server: Server,
    body: ChatCompletionRequest,
    handles: list[RequestHandle],
    base: dict[str, Any],
    with_tools: bool,
    prefix: str,
) -> AsyncIterator[str]:
    """SSE frames of a streamed chat completion, ending with ``data: [DONE]``."""
    started = time.perf_counter()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    head = {**base, "object": "chat.completion.chunk"}
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
            **extra,
        }
        return sse({**head, "choices": [choice]})

    parsers = [ToolCallParser() for _ in handles]
    calls_made = [0] * len(handles)
    for i, parser in enumerate(parsers):
        parser.push(prefix)
        yield chunk(i, {"role": "assistant", "content": ""})
    first = True
    done: list[Completion | None] = [None] * len(handles)
    try:
        async for i, item in merged(handles):
            if isinstance(item, str):
                if first:
                    server.metrics.observe_ttft(time.perf_counter() - started)
                    first = False
                for frame in _chat_deltas(parsers[i], item, i, calls_made, with_tools, body, chunk):
                    yield frame
                continue
            done[i] = item
            if with_tools:
                rest = parsers[i].finish()
                if rest:
                    yield chunk(i, {"content": rest})
            finish = "tool_calls" if calls_made[i] else item.finish_reason
            logprobs = chat_logprobs(server, item) if body.logprobs else None
            yield chunk(i, {}, finish, logprobs=logprobs)
    except Exception as exc:  # an engine step failed mid-stream: report it, then end the stream
        yield sse(error_body(500, f"generation failed: {type(exc).__name__}: {exc}"))
    else:
        if include_usage:
            finished = [c for c in done if c is not None]
            yield sse({**head, "choices": [], "usage": usage_of(finished, body.n)})
    yield sse("[DONE]")


def _chat_deltas(
    parser: ToolCallParser,
    text: str,
    index: int,
    calls_made: list[int],
    with_tools: bool,
    body: ChatCompletionRequest,
    chunk: Callable[..., str],
) -> Iterator[str]:
    content, calls = parser.push(text) if with_tools else (text, [])
    if content:
        yield chunk(index, {"content": content})
    for call in calls:
        if calls_made[index] and not body.parallel_tool_calls:
            continue
        yield chunk(index, {"tool_calls": [call.openai(calls_made[index])]})
        calls_made[index] += 1


async def completion_events(
    server: Server,
    body: CompletionRequest,
    handles: list[RequestHandle],
    base: dict[str, Any],
) -> AsyncIterator[str]:
    """SSE frames of a streamed text completion, ending with ``data: [DONE]``."""
    started = time.perf_counter()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    head = {**base, **({"usage": None} if include_usage else {})}

    def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice]})

    first = True
    done: list[Completion | None] = [None] * len(handles)
    try:
        async for i, item in merged(handles):
            if isinstance(item, str):
                if first:
                    server.metrics.observe_ttft(time.perf_counter() - started)
                    first = False
                yield chunk(i, item)
                continue
            done[i] = item
            logprobs = completion_logprobs(server, item) if body.logprobs is not None else None
            yield chunk(i, "", item.finish_reason, logprobs)
    except Exception as exc:  # an engine step failed mid-stream: report it, then end the stream
        yield sse(error_body(500, f"generation failed: {type(exc).__name__}: {exc}"))
    else:
        if include_usage:
            finished = [c for c in done if c is not None]
            yield sse({**head, "choices": [], "usage": usage_of(finished, body.n)})
    yield sse("[DONE]")
