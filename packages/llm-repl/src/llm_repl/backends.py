"""Chat backends: a remote OpenAI-compatible server (httpx) and the local engine (llm-infer).

Both stream the assistant's reply as text deltas: ``stream(messages, **sampling)`` is an async
iterator of strings. After a stream ends, ``last_usage`` holds its token counts when known.
Failures raise :class:`BackendError` with one line that says what went wrong.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

Messages = list[dict[str, Any]]
TokenCounter = Callable[[Messages], int]

FALLBACK_CONTEXT = 4096  # tokens assumed when a server does not say (llama.cpp's usual n_ctx)
CHARS_PER_TOKEN = 3  # a cautious estimate (English runs ~4) when nothing can count tokens


def estimated_budget() -> tuple[TokenCounter, int]:
    """A token count estimated from characters (plus a few per message for the chat
    template) and :data:`FALLBACK_CONTEXT`: for servers that cannot count or say their context."""

    def count(messages: Messages) -> int:
        return sum(math.ceil(len(m.get("content") or "") / CHARS_PER_TOKEN) + 8 for m in messages)

    return count, FALLBACK_CONTEXT


class BackendError(Exception):
    """A backend could not answer; the message is one line for the user."""


class RemoteBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` server, streamed over SSE."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else f"{base}/v1"
        self.model = model
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.last_usage: dict[str, int] | None = None

    @property
    def name(self) -> str:
        return f"{self.model or 'default model'} at {self.base_url}"

    async def list_models(self) -> list[str]:
        """Model ids the server offers. Raises :class:`BackendError`."""
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            try:
                response = await client.get(f"{self.base_url}/models")
            except httpx.HTTPError as exc:
                raise BackendError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
            if response.status_code != 200:
                raise BackendError(_http_error(response.status_code, response.content))
            return [m["id"] for m in response.json().get("data", [])]

    def context_budget(self) -> tuple[TokenCounter, int]:
        """How to count a chat prompt's tokens, and the context (tokens) it must fit in.

        Asks the server's ``POST /tokenize`` (vLLM, llm-serve: the chat template's exact count
        and ``max_model_len``); a server without it gets :func:`estimated_budget`. Blocking
        (call it off the event loop); the counter raises :class:`BackendError`.
        """
        url = f"{self.base_url.removesuffix('/v1')}/tokenize"
        model = {"model": self.model} if self.model else {}

        def tokenize(messages: Messages) -> tuple[int, int] | None:
            try:
                response = httpx.post(
                    url,
                    json={**model, "messages": messages},
                    headers=self.headers,
                    timeout=self.timeout,
                )
                data = response.json() if response.status_code == 200 else {}
                return int(data["count"]), int(data["max_model_len"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return None

        probe = tokenize([{"role": "user", "content": "hi"}])
        if probe is None:
            return estimated_budget()

        def count(messages: Messages) -> int:
            got = tokenize(messages)
            if got is None:
                raise BackendError(f"{url} stopped counting tokens")
            return got[0]

        return count, probe[1]

    async def stream(self, messages: Messages, **sampling: Any) -> AsyncIterator[str]:
        """Yield the reply's text deltas. Raises :class:`BackendError`."""
        self.last_usage = None
        body: dict[str, Any] = {
            "model": self.model or "default",
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **{k: v for k, v in sampling.items() if v is not None},
        }
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            try:
                async with client.stream(
                    "POST", f"{self.base_url}/chat/completions", json=body
                ) as response:
                    if response.status_code != 200:
                        raise BackendError(
                            _http_error(response.status_code, await response.aread())
                        )
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        chunk = json.loads(data)
                        if "error" in chunk:
                            raise BackendError(
                                f"server error: {chunk['error'].get('message', chunk['error'])}"
                            )
                        if chunk.get("usage"):
                            self.last_usage = chunk["usage"]
                        for choice in chunk.get("choices") or []:
                            content = (choice.get("delta") or {}).get("content")
                            if content:
                                yield content
            except httpx.HTTPError as exc:
                raise BackendError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
            except json.JSONDecodeError:
                raise BackendError(
                    f"{self.base_url} sent a stream that is not OpenAI's SSE format"
                ) from None


class LocalBackend:
    """A model loaded in this process through llm-infer (the ``local`` extra)."""

    def __init__(self, source: str = "demo") -> None:
        try:
            import llm_infer
        except ImportError:
            raise BackendError(
                "the local backend needs llm-infer: pip install 'llm-repl[local]' (or use --server URL)"
            ) from None
        try:
            self.llm = llm_infer.load(source)
        except (llm_infer.InferError, OSError, ValueError) as exc:
            raise BackendError(str(exc).splitlines()[0]) from None
        self.source = source
        self.last_usage: dict[str, int] | None = None

    @property
    def name(self) -> str:
        return f"{self.source} (local)"

    async def list_models(self) -> list[str]:
        return [self.source]

    def context_budget(self) -> tuple[TokenCounter, int]:
        """How to count a chat prompt's tokens (the model's template and tokenizer), and the
        model's context length in tokens."""
        llm = self.llm
        return lambda m: len(llm.tokenizer.encode(llm.chat_prompt(m))), llm.context_length

    async def stream(self, messages: Messages, **sampling: Any) -> AsyncIterator[str]:
        """Yield the reply's text deltas; generation runs in a worker thread and stops at the
        next token once the consumer goes away (cancellation). Raises :class:`BackendError`."""
        self.last_usage = None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        params = {k: v for k, v in sampling.items() if v is not None}

        def work() -> None:
            pieces = []
            try:
                for delta in self.llm.stream_chat(messages, **params):
                    if stop.is_set():
                        break
                    pieces.append(delta)
                    loop.call_soon_threadsafe(queue.put_nowait, ("delta", delta))
                text = "".join(pieces)
                tokens = len(self.llm.tokenizer.encode(text)) if text else 0
                loop.call_soon_threadsafe(queue.put_nowait, ("done", tokens))
            except Exception as exc:  # reported to the consumer as one line
                loop.call_soon_threadsafe(queue.put_nowait, ("error", str(exc).splitlines()[0]))

        worker = threading.Thread(target=work, name="llm-repl-generate", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    yield value
                elif kind == "done":
                    self.last_usage = {"completion_tokens": value}
                    return
                else:
                    raise BackendError(value)
        finally:
            stop.set()


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused (is the server running?)"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


def _http_error(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()[:200] or "no details"
    return f"server answered {status}: {message}"
