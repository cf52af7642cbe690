"""llm_serve.client against the in-process server: sync and async, streamed and not, errors."""

from __future__ import annotations

import asyncio

import pytest
from llm_serve.client import AsyncClient, Client, ServerError

USER = [{"role": "user", "content": "Wrap this text."}]


def test_sync_client(server, model, ids):
    sampling = {"max_tokens": 8, "temperature": 0, "logit_bias": {str(ids["eos"]): -100}}
    with Client(server.url) as client:
        assert client.health() and client.models() == [model]
        whole = client.chat(USER, **sampling)["choices"][0]["message"]["content"]
        assert "".join(client.stream(USER, **sampling)) == whole
        assert client.complete("def", max_tokens=3)["usage"]["completion_tokens"] >= 1
        assert len(client.embed(["a", "b"])) == 2
        tokens = client.tokenize("héllo")
        assert client.detokenize(tokens) == "héllo"
        with pytest.raises(ServerError) as info:
            list(client.stream(USER, temperature=9))
        assert info.value.status == 400 and info.value.param == "temperature"
    with Client(server.url, model="nope") as wrong, pytest.raises(ServerError) as info:
        wrong.chat(USER)
    assert info.value.status == 404 and info.value.code == "model_not_found"


def test_async_client(server, ids):
    sampling = {"max_tokens": 8, "temperature": 0, "logit_bias": {str(ids["eos"]): -100}}

    async def main():
        async with AsyncClient(server.url) as client:
            assert await client.health()
            whole = (await client.chat(USER, **sampling))["choices"][0]["message"]["content"]
            streamed = "".join([d async for d in client.stream(USER, **sampling)])
            embedded = await client.embed(["a"])
            with pytest.raises(ServerError):
                await client.complete("", max_tokens=2)
            return whole, streamed, embedded

    whole, streamed, embedded = asyncio.run(main())
    assert streamed == whole and len(embedded[0]) == 64
