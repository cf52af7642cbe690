"""llm_serve's HTTP client satisfies llm-agent's ``ChatModel`` protocol, in shape and in behaviour."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Protocol, runtime_checkable

import httpx
from llm_agent.protocols import ChatModel
from llm_serve.client import AsyncClient

SSE = (
    'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
    'data: {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}]}\n\n'
    'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
    "data: [DONE]\n\n"
)


@runtime_checkable
class _Checked(ChatModel, Protocol):
    """The protocol made checkable here, leaving the package's own untouched."""


def test_async_client_has_the_protocol_shape():
    assert isinstance(AsyncClient(), _Checked)
    stream = AsyncClient.stream
    assert inspect.isasyncgenfunction(stream)
    params = inspect.signature(stream).parameters
    want = inspect.signature(ChatModel.stream).parameters
    assert list(params) == list(want)
    assert [p.kind for p in params.values()] == [p.kind for p in want.values()]


def test_async_client_streams_text_deltas():
    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, text=SSE, headers={"content-type": "text/event-stream"})

    backend: ChatModel = AsyncClient(model="m", transport=httpx.MockTransport(answer))

    async def collect() -> list[str]:
        return [d async for d in backend.stream([{"role": "user", "content": "hi"}], max_tokens=5)]

    assert asyncio.run(collect()) == ["Hel", "lo"]
    assert sent == [
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 5,
        }
    ]
