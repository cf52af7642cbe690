"""Typed httpx clients for llm-serve (or any OpenAI-compatible server), sync and async.

``stream(messages, **sampling)`` yields the reply's text deltas; the async one is what
llm-repl's ``ChatBackend`` and llm-agent's ``ChatModel`` protocols ask for, so the REPL and the
agent work the same against a local engine or a server::

    async with AsyncClient("http://127.0.0.1:8000", api_key="...") as client:
        async for delta in client.stream([{"role": "user", "content": "Hi"}], max_tokens=64):
            print(delta, end="")

Sampling keywords are the request body's fields (``temperature``, ``max_tokens``, ``stop``,
``seed``, ``top_k``, ...). Every method raises :class:`ServerError` for an error response (or
an error event in a stream) and ``httpx.HTTPError`` when the server cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

Messages = Sequence[Mapping[str, Any]]
DEFAULT_URL = "http://127.0.0.1:8000"


class ServerError(Exception):
    """An error answered by the server: HTTP ``status`` and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    @classmethod
    def from_body(cls, status: int, body: Any) -> ServerError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(status, str(body))
        return cls(
            status,
            str(error.get("message", "")),
            type=error.get("type"),
            param=error.get("param"),
            code=error.get("code"),
        )


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        raise ServerError.from_body(response.status_code, body)
    return response.json()


def _event(line: str) -> dict[str, Any] | None:
    """The JSON of one SSE ``data:`` line; None for other lines and for ``[DONE]``.

    Raises ServerError for an error event.
    """
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    event = json.loads(data)
    if "error" in event:
        raise ServerError.from_body(500, event)
    return event


def _chat_body(
    model: str, messages: Messages, stream: bool, sampling: dict[str, Any]
) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), "stream": stream, **sampling}


def _delta_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    return delta.get("content") or choices[0].get("text") or ""


class Client:
    """Synchronous client. ``model`` defaults to the first one ``/v1/models`` lists."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
        )
        self._model = model

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self.models()[0]
        return self._model

    def models(self) -> list[str]:
        """The ids of the served models."""
        return [m["id"] for m in _check(self._http.get("/v1/models"))["data"]]

    def chat(self, messages: Messages, **sampling: Any) -> dict[str, Any]:
        """The whole chat completion response (OpenAI's JSON)."""
        body = _chat_body(self.model, messages, False, sampling)
        return _check(self._http.post("/v1/chat/completions", json=body))

    def stream(self, messages: Messages, **sampling: Any) -> Iterator[str]:
        """The assistant's reply as text deltas."""
        body = _chat_body(self.model, messages, True, sampling)
        with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            for line in response.iter_lines():
                event = _event(line)
                if event is not None and (text := _delta_text(event)):
                    yield text

    def complete(self, prompt: str | Sequence[int], **sampling: Any) -> dict[str, Any]:
        """The whole text completion response of ``prompt`` (text or token ids)."""
        body = {"model": self.model, "prompt": prompt, **sampling}
        return _check(self._http.post("/v1/completions", json=body))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One embedding per text."""
        body = {"model": self.model, "input": list(texts), "encoding_format": "float"}
        return [
            d["embedding"] for d in _check(self._http.post("/v1/embeddings", json=body))["data"]
        ]

    def tokenize(self, text: str) -> list[int]:
        return _check(self._http.post("/tokenize", json={"prompt": text}))["tokens"]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return _check(self._http.post("/detokenize", json={"tokens": list(tokens)}))["prompt"]

    def health(self) -> bool:
        """Whether the server answers ``/health`` with 200."""
        return self._http.get("/health").status_code == 200

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client; satisfies llm-repl's ``ChatBackend`` and llm-agent's ``ChatModel``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
        )
        self._model = model

    async def model(self) -> str:
        """The model named in requests (the first served one unless given)."""
        if self._model is None:
            self._model = (await self.models())[0]
        return self._model

    async def models(self) -> list[str]:
        """The ids of the served models."""
        return [m["id"] for m in _check(await self._http.get("/v1/models"))["data"]]

    async def chat(self, messages: Messages, **sampling: Any) -> dict[str, Any]:
        """The whole chat completion response (OpenAI's JSON)."""
        body = _chat_body(await self.model(), messages, False, sampling)
        return _check(await self._http.post("/v1/chat/completions", json=body))

    async def stream(self, messages: Messages, **sampling: Any) -> AsyncIterator[str]:
        """The assistant's reply as text deltas; leaving the loop early closes the connection,
        which cancels the generation on the server."""
        body = _chat_body(await self.model(), messages, True, sampling)
        async with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                _check(response)
            async for line in response.aiter_lines():
                event = _event(line)
                if event is not None and (text := _delta_text(event)):
                    yield text

    async def complete(self, prompt: str | Sequence[int], **sampling: Any) -> dict[str, Any]:
        """The whole text completion response of ``prompt`` (text or token ids)."""
        body = {"model": await self.model(), "prompt": prompt, **sampling}
        return _check(await self._http.post("/v1/completions", json=body))

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One embedding per text."""
        body = {"model": await self.model(), "input": list(texts), "encoding_format": "float"}
        response = await self._http.post("/v1/embeddings", json=body)
        return [d["embedding"] for d in _check(response)["data"]]

    async def health(self) -> bool:
        """Whether the server answers ``/health`` with 200."""
        return (await self._http.get("/health")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
