"""The OpenAI-compatible FastAPI application over an llm-infer ``Engine``.

``create_app(llm, ServerConfig(...))`` builds the app; its lifespan starts the engine on the
server's event loop. Routes: ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (SSE with ``"stream": true``), ``POST /v1/embeddings``,
``POST /tokenize``, ``POST /detokenize``, ``GET /health`` and ``GET /metrics``.

Every error is answered in OpenAI's shape (:mod:`llm_serve.middleware`); a client that
disconnects cancels its generation (:mod:`llm_serve.responses`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from llm_infer import LLM

from llm_serve.errors import APIError
from llm_serve.metrics import CONTENT_TYPE
from llm_serve.middleware import Guard, add_error_handlers
from llm_serve.protocols import HiddenStatesModel
from llm_serve.responses import (
    chat_events,
    chat_logprobs,
    chat_messages,
    completion_events,
    completion_logprobs,
    event_stream,
    split_reply,
    template_message,
    usage_of,
    wait_all,
)
from llm_serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    NamedToolChoice,
    TokenizeRequest,
)
from llm_serve.state import Server, ServerConfig
from llm_serve.tools import reply_prefix

__all__ = ["ServerConfig", "create_app"]


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
    add_error_handlers(app)
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

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text: requests, tokens, queue depth, time to first token and per output
        token (histograms), prefix-cache hits."""
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

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
            return event_stream(completion_events(server, body, handles, base))
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
            return event_stream(events)
        done = await wait_all(handles, request)
        if done is None:
            return JSONResponse({}, status_code=499)
        choices = []
        for i, c in enumerate(done):
            content, calls = (
                split_reply(prefix + c.text, body.parallel_tool_calls)
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
            messages = [template_message(m) for m in body.messages]
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


@torch.inference_mode()
def _mean_pool(model: HiddenStatesModel, ids: list[list[int]]) -> list[list[float]]:
    device = getattr(model, "device", None)
    vectors = []
    for seq in ids:
        tokens = torch.tensor([seq], device=device)  # (1, T)
        hidden = model.hidden_states(tokens)  # (1, T, C)
        vectors.append(hidden[0].float().mean(dim=0).tolist())  # (C,)
    return vectors
