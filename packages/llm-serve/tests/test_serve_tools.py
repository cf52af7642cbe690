"""Tools: ``<tool_call>{json}</tool_call>`` from the real engine comes back as OpenAI tool_calls.

The fixture tokenizer has the whole call as one added token, so a logit_bias on it makes the
random model call ``get_weather(city="Paris")`` deterministically.
"""

from __future__ import annotations

import json

import httpx

USER = [{"role": "user", "content": "Weather in Paris?"}]


def call_token(ids, name="tool_call", max_tokens=1):
    return {"logit_bias": {str(ids[name]): 100}, "max_tokens": max_tokens}


def test_tool_call_returned_as_tool_calls(client, model, ids, weather_tool):
    out = client.chat.completions.create(
        model=model, messages=USER, tools=[weather_tool], **call_token(ids)
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_parallel_tool_calls(client, model, ids, weather_tool):
    params = dict(model=model, messages=USER, tools=[weather_tool], **call_token(ids, max_tokens=2))
    assert len(client.chat.completions.create(**params).choices[0].message.tool_calls) == 2
    single = client.chat.completions.create(**params, parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls) == 1


def test_streamed_tool_calls(client, model, ids, weather_tool):
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=USER,
            tools=[weather_tool],
            stream=True,
            **call_token(ids, max_tokens=2),
        )
    )
    calls = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or ():
            entry = calls.setdefault(delta.index, {"name": "", "arguments": "", "id": delta.id})
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
    assert sorted(calls) == [0, 1]
    for entry in calls.values():
        assert entry["name"] == "get_weather" and entry["id"].startswith("call_")
        assert json.loads(entry["arguments"]) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)


def test_named_tool_choice_starts_the_call(client, model, ids, weather_tool):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    out = client.chat.completions.create(
        model=model,
        messages=USER,
        tools=[weather_tool],
        tool_choice=choice,
        **call_token(ids, "named_tail"),
    )
    (call,) = out.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_choice_none_leaves_the_text(client, model, ids, weather_tool):
    out = client.chat.completions.create(
        model=model, messages=USER, tools=[weather_tool], tool_choice="none", **call_token(ids)
    )
    assert out.choices[0].message.tool_calls is None
    assert out.choices[0].message.content.startswith("<tool_call>")
    assert out.choices[0].finish_reason == "length"


def test_conversation_with_tool_results(client, model, ids, weather_tool):
    first = client.chat.completions.create(
        model=model, messages=USER, tools=[weather_tool], **call_token(ids)
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    out = client.chat.completions.create(
        model=model, messages=messages, tools=[weather_tool], max_tokens=3, temperature=0
    )
    assert out.usage.prompt_tokens > first.usage.prompt_tokens


def test_unknown_named_tool_is_400(server, model, weather_tool):
    body = {
        "model": model,
        "messages": USER,
        "tools": [weather_tool],
        "tool_choice": {"type": "function", "function": {"name": "nope"}},
    }
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tool_choice"
