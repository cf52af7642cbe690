"""OpenAIChatModel: OpenAI's streamed ``tool_calls`` (split over chunks, two in parallel) come
back as ``<tool_call>`` text with their ids; HTTP errors are one AgentError line. The SSE
stream is a hand-written OpenAI stream served through httpx's mock transport."""

from __future__ import annotations

import asyncio
import inspect
import json

import httpx
import pytest
from llm_agent import AgentError, LocalChatModel, OpenAIChatModel
from llm_agent.calls import CallStream, parse_calls
from llm_agent.protocols import ChatModel


def sse(*deltas: dict, finish: str = "tool_calls") -> str:
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def tc(index: int, *, id: str | None = None, name: str | None = None, args: str = "") -> dict:
    function = {"arguments": args, **({"name": name} if name else {})}
    return {
        "tool_calls": [
            {"index": index, **({"id": id, "type": "function"} if id else {}), "function": function}
        ]
    }


STREAM = sse(
    {"role": "assistant", "content": "Looking. "},
    tc(0, id="call_a", name="read_file", args=""),
    tc(0, args='{"path": '),
    tc(0, args='"a.txt"}'),
    tc(1, id="call_b", name="list_dir", args="{}"),
)


def model_answering(status: int, body: str, sent: list) -> OpenAIChatModel:
    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content) if request.content else None))
        if request.url.path.endswith("/models"):
            return httpx.Response(
                200, json={"object": "list", "data": [{"id": "m1", "object": "model"}]}
            )
        kind = "text/event-stream" if status == 200 else "application/json"
        return httpx.Response(status, text=body, headers={"content-type": kind})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return OpenAIChatModel("http://test:1", http_client=client)


def collect(model: OpenAIChatModel, **sampling) -> list[str]:
    async def go() -> list[str]:
        return [d async for d in model.stream([{"role": "user", "content": "hi"}], **sampling)]

    return asyncio.run(go())


def test_streamed_tool_calls_become_tool_call_text():
    sent: list = []
    model = model_answering(200, STREAM, sent)
    deltas = collect(model, tools=[{"type": "function", "function": {"name": "x"}}], temperature=0)
    assert deltas[0] == "Looking. "
    stream = CallStream()
    text, blocks = stream.push("".join(deltas))
    calls = [call for b in blocks for call in parse_calls(b)]
    assert text == "Looking. "
    assert [(c.id, c.name, c.arguments, c.error) for c in calls] == [
        ("call_a", "read_file", {"path": "a.txt"}, None),
        ("call_b", "list_dir", {}, None),
    ]
    (models_path, _), (path, body) = sent
    assert models_path == "/v1/models" and path == "/v1/chat/completions"
    assert body["model"] == "m1" and body["stream"] is True and body["temperature"] == 0
    assert body["tools"] == [{"type": "function", "function": {"name": "x"}}]


def test_bad_arguments_from_a_server_are_a_malformed_call():
    body = sse(tc(0, id="call_x", name="read_file", args='{"path": '))
    deltas = collect(model_answering(200, body, []))
    (block,) = CallStream().push("".join(deltas))[1]
    (call,) = parse_calls(block)
    assert call.id == "call_x" and call.error.startswith(
        "malformed call of read_file: its arguments are not JSON"
    )


def test_http_errors_are_one_line():
    error = json.dumps(
        {"error": {"message": "temperature must be at most 2", "type": "invalid_request_error"}}
    )
    with pytest.raises(
        AgentError, match=r"^http://test:1/v1 answered 400: temperature must be at most 2$"
    ):
        collect(model_answering(400, error, []), temperature=5)


def test_models_have_the_protocol_shape():
    want = inspect.signature(ChatModel.stream).parameters
    for cls in (OpenAIChatModel, LocalChatModel):
        assert inspect.isasyncgenfunction(cls.stream)
        params = inspect.signature(cls.stream).parameters
        assert list(params) == list(want)
        assert [p.kind for p in params.values()] == [p.kind for p in want.values()]
    assert OpenAIChatModel.native_tools and not LocalChatModel.native_tools


def test_the_local_model_streams_through_its_engine():
    # the demo model, in this process: the reply is what LLM.chat gives for the same request
    pytest.importorskip("llm_infer")
    model = LocalChatModel("demo")
    messages = [{"role": "user", "content": "hello"}]
    reply = asyncio.run(reply_of(model, messages, temperature=0, max_tokens=12))
    assert reply == model.llm.chat(messages, temperature=0, max_tokens=12).text
    with pytest.raises(AgentError, match="temperature"):
        asyncio.run(reply_of(model, messages, temperature=5))


async def reply_of(model: LocalChatModel, messages: list[dict[str, str]], **params) -> str:
    try:
        return "".join([delta async for delta in model.stream(messages, **params)])
    finally:
        await model.aclose()
