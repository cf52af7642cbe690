"""Chat backends: a remote OpenAI-compatible server (httpx) and the local engine (llm-infer).

Both stream the assistant's reply as text deltas: ``stream(messages, **sampling)`` is an async
iterator of strings. After a stream ends, ``last_usage`` holds its token counts when known.
Failures raise :class:`BackendError` with one line that says what went wrong.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

Messages = list[dict[str, Any]]
# The local backend's sampling where the user set none: llama.cpp's llama-cli defaults (a
# small chat model rambles at OpenAI's plain temperature 1); /set and the flags override them.
LOCAL_SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}

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
    """A model loaded in this process through llm-infer (the ``local`` extra).

    The conversation runs on an ``llm_infer.Session``: its KV cache stays between turns, so
    a follow-up prefills only its new tokens, and ``last_usage`` has the true token counts
    (``prompt_tokens`` fed this turn, ``cached_tokens`` reused, ``completion_tokens``).
    Generation runs on one worker thread, a token at a time. Sampling settings the user left
    unset take llama.cpp's defaults (:data:`LOCAL_SAMPLING`).
    """

    def __init__(self, source: str = "demo", *, llm: Any = None) -> None:
        try:
            import llm_infer
        except ImportError:
            raise BackendError(
                "the local backend needs llm-infer: pip install 'llm-repl[local]' (or use --server URL)"
            ) from None
        if llm is None:
            try:
                llm = llm_infer.load(source)
            except (llm_infer.InferError, OSError, ValueError) as exc:
                raise BackendError(str(exc).splitlines()[0]) from None
        self.llm = llm
        self.session = llm_infer.Session(llm)
        self.source = source
        self.last_usage: dict[str, int] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-repl-generate")

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
        """Yield the reply's text deltas; a consumer that goes away stops the generation after
        the token in progress (cancellation). Raises :class:`BackendError`."""
        self.last_usage = None
        loop = asyncio.get_running_loop()
        params = {**LOCAL_SAMPLING, **{k: v for k, v in sampling.items() if v is not None}}

        def start() -> Iterator[str]:
            return self.session.stream_chat(messages, **params)

        try:
            deltas = await loop.run_in_executor(self._worker, start)
        except Exception as exc:  # a bad setting or an over-long conversation: one line
            raise BackendError(str(exc).splitlines()[0]) from None
        try:
            while True:
                try:
                    delta = await loop.run_in_executor(self._worker, next, deltas, None)
                except Exception as exc:
                    raise BackendError(str(exc).splitlines()[0]) from None
                if delta is None:
                    break
                yield delta
            usage = self.session.last.usage
            self.last_usage = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_tokens": usage.cached_tokens,
            }
        finally:
            # the same worker: runs after the token in progress, never beside it
            self._worker.submit(deltas.close)


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
