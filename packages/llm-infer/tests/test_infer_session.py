"""Session: multi-turn reuse of the KV cache, context limits, sink caches."""

from __future__ import annotations

import pytest
from llm_infer import ContextLengthError, Session


def test_second_turn_feeds_only_new_tokens_and_matches_one_long_prompt(llm, tokenizer):
    no_special = {tokenizer.token_id(t): -100.0 for t in tokenizer.special_tokens}
    params = dict(temperature=0, max_tokens=6, logit_bias=no_special)
    session = Session(llm, system="be brief")
    first = session.send("hello", **params)
    assert first.usage.cached_tokens == 0
    rendered_first = llm.chat_prompt(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    )
    second = session.send("and again", **params)
    held = first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert second.usage.cached_tokens == held
    rendered_second = llm.chat_prompt(session.messages[:-1])
    history = rendered_first + tokenizer.decode(first.token_ids)
    assert rendered_second.startswith(history)
    ids = (
        tokenizer.encode(rendered_first)
        + first.token_ids
        + tokenizer.encode(rendered_second[len(history) :])
    )
    assert second.token_ids == llm.generate(ids, **params).token_ids


def test_stream_equals_send_and_reset_forgets(llm):
    a = Session(llm)
    text = "".join(a.stream("hi there", temperature=0, max_tokens=8))
    b = Session(llm)
    assert b.send("hi there", temperature=0, max_tokens=8).text == text
    a.reset()
    assert a.messages == [] and a.position == 0
    assert a.send("hi there", temperature=0, max_tokens=8).text == text


def test_static_session_raises_context_length_error(llm):
    session = Session(llm, capacity=64)
    with pytest.raises(ContextLengthError, match=r"limit is 64 tokens, this request needs \d+"):
        session.send("x" * 10, max_tokens=60)


def test_sink_session_never_runs_out(llm):
    try:
        session = Session(llm, cache_kind="sink", window=32, sink_tokens=4)
    except (TypeError, ValueError) as exc:
        pytest.skip(f"llm-core has no sink cache yet: {exc}")
    for turn in range(6):
        reply = session.send(f"turn {turn} " * 4, temperature=0, max_tokens=12, ignore_eos=True)
        assert reply.usage.completion_tokens == 12
    assert session.position > 36  # far past the ring's 36 slots


def test_an_abandoned_stream_leaves_the_session_usable(llm):
    session = Session(llm)
    stream = session.stream("first", temperature=0, max_tokens=30, ignore_eos=True)
    next(stream)
    stream.close()
    fresh = Session(llm).send("second", temperature=0, max_tokens=8)
    assert session.send("second", temperature=0, max_tokens=8).token_ids == fresh.token_ids
