"""The official ``openai`` client against the server: models, completions, chat, parameters."""

from __future__ import annotations

import pytest

USER = [{"role": "user", "content": "Wrap this text, please."}]


def no_eos(ids: dict[str, int]) -> dict[str, dict[str, int]]:
    return {"logit_bias": {str(ids["eos"]): -100}}


def test_models_lists_the_served_model(model, client):
    models = client.models.list().data
    assert [m.id for m in models] == [model]
    assert client.models.retrieve(model).id == model


def test_completion_with_usage(model, client, ids):
    out = client.completions.create(
        model=model, prompt="def wrap(text):", max_tokens=12, temperature=0, **no_eos(ids)
    )
    assert out.object == "text_completion"
    choice = out.choices[0]
    assert choice.finish_reason == "length" and choice.text
    assert out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_chat_completion_not_streamed(model, client, ids):
    out = client.chat.completions.create(
        model=model, messages=USER, max_tokens=10, temperature=0, **no_eos(ids)
    )
    assert out.object == "chat.completion"
    message = out.choices[0].message
    assert message.role == "assistant" and message.content
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 10


def test_chat_stream_matches_the_unstreamed_reply(model, client, ids):
    params = dict(model=model, messages=USER, max_tokens=16, temperature=0, **no_eos(ids))
    whole = client.chat.completions.create(**params).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream(model, client, ids):
    params = dict(model=model, prompt="The text", max_tokens=8, temperature=0, **no_eos(ids))
    whole = client.completions.create(**params).choices[0].text
    chunks = list(client.completions.create(**params, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_cuts_the_reply(model, client, ids):
    params = dict(model=model, messages=USER, max_tokens=30, temperature=0, **no_eos(ids))
    text = client.chat.completions.create(**params).choices[0].message.content
    stop = text[6:9]
    out = client.chat.completions.create(**params, stop=[stop])
    assert out.choices[0].message.content == text[: text.find(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(**params, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[: text.find(stop)]


def test_eos_finishes_with_stop(model, client, ids):
    out = client.chat.completions.create(
        model=model, messages=USER, max_tokens=10, logit_bias={str(ids["eos"]): 100}
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == ""
    assert out.usage.completion_tokens == 1


@pytest.mark.parametrize("stream", [False, True])
def test_seed_reproduces_a_sampled_reply(model, client, ids, stream):
    def reply(seed):
        params = dict(model=model, messages=USER, max_tokens=20, temperature=1.0, seed=seed)
        out = client.chat.completions.create(**params, **no_eos(ids), stream=stream)
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in out)
        return out.choices[0].message.content

    assert reply(7) == reply(7)
    assert reply(7) != reply(8)


def test_n_choices(model, client, ids):
    out = client.chat.completions.create(
        model=model, messages=USER, max_tokens=8, n=3, seed=1, **no_eos(ids)
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) == 3  # choice i is seeded seed + i
    assert out.usage.completion_tokens == 24
    streamed = client.chat.completions.create(
        model=model, messages=USER, max_tokens=8, n=3, seed=1, stream=True, **no_eos(ids)
    )
    texts = ["", "", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in out.choices]


def test_chat_logprobs(model, client, ids):
    out = client.chat.completions.create(
        model=model,
        messages=USER,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        **no_eos(ids),
    )
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        # greedy with an eos ban only: the chosen token is the most likely one
        assert entry.token == entry.top_logprobs[0].token
    streamed = client.chat.completions.create(
        model=model,
        messages=USER,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        stream=True,
        **no_eos(ids),
    )
    entries = [
        e
        for c in streamed
        for e in ((c.choices[0].logprobs.content or []) if c.choices[0].logprobs else [])
    ]
    assert [e.token for e in entries] == [e.token for e in content]


def test_completion_logprobs(model, client, ids):
    out = client.completions.create(
        model=model, prompt="text", max_tokens=4, temperature=0, logprobs=2, **no_eos(ids)
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    # keyed by token text, as OpenAI's legacy format is: two ids may share one ("\ufffd")
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert all(
        lp.token_logprobs[i] >= max(top.values()) - 1e-6 for i, top in enumerate(lp.top_logprobs)
    )


def test_token_id_prompts_and_batches(model, client, ids, llm):
    prompt_ids = llm.tokenizer.encode("def wrap(text):")
    by_ids = client.completions.create(
        model=model, prompt=prompt_ids, max_tokens=6, temperature=0, **no_eos(ids)
    )
    by_text = client.completions.create(
        model=model, prompt="def wrap(text):", max_tokens=6, temperature=0, **no_eos(ids)
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(
        model=model,
        prompt=["def wrap(text):", "a"],
        max_tokens=6,
        temperature=0,
        n=2,
        **no_eos(ids),
    )
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == by_text.choices[0].text


def test_sampling_extras_are_accepted(model, client, ids):
    out = client.chat.completions.create(
        model=model,
        messages=USER,
        max_completion_tokens=6,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=3,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 2},
        **no_eos(ids),
    )
    assert out.usage.completion_tokens == 6


def test_tiny_temperature_is_greedy(model, client, ids):
    """logits / 1e-300 would overflow to NaN probabilities; below 1e-5 the server decodes greedily."""
    params = dict(model=model, messages=USER, max_tokens=6, **no_eos(ids))
    greedy = client.chat.completions.create(**params, temperature=0).choices[0].message.content
    tiny = client.chat.completions.create(**params, temperature=1e-300).choices[0].message.content
    assert tiny == greedy


def test_ignore_eos_runs_to_max_tokens(model, client, ids):
    out = client.chat.completions.create(
        model=model,
        messages=USER,
        max_tokens=5,
        logit_bias={str(ids["eos"]): 100},
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 5
