"""The local backend keeps the conversation's KV cache: a follow-up prefills only its new tokens."""

from __future__ import annotations

import asyncio

import pytest

llm_infer = pytest.importorskip("llm_infer")

from llm_repl.backends import BackendError, LocalBackend  # noqa: E402


class CountingModel:
    """The wrapped model, counting the tokens it is fed (prefill and decode alike)."""

    def __init__(self, model) -> None:
        self.model = model
        self.fed = 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def forward(self, tokens, cache=None, positions=None, *, logits_to_keep=0):
        self.fed += tokens.numel()
        return self.model.forward(tokens, cache, positions, logits_to_keep=logits_to_keep)


def reply(backend: LocalBackend, messages: list[dict], **sampling) -> str:
    async def collect() -> str:
        return "".join([d async for d in backend.stream(messages, **sampling)])

    return asyncio.run(collect())


def test_a_follow_up_turn_feeds_the_model_only_its_new_tokens():
    demo = llm_infer.load("demo")
    model = CountingModel(demo.model)
    backend = LocalBackend("demo", llm=llm_infer.LLM(model, demo.tokenizer, compile=False))
    sampling = dict(temperature=0, max_tokens=8, ignore_eos=True)
    messages = [{"role": "user", "content": "What does json.dumps do?"}]
    first = reply(backend, messages, **sampling)
    one = backend.last_usage
    assert model.fed == one["prompt_tokens"] + one["completion_tokens"] - 1
    assert one["cached_tokens"] == 0 and one["completion_tokens"] == 8

    messages += [
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And json.loads?"},
    ]
    before = model.fed
    reply(backend, messages, **sampling)
    two = backend.last_usage
    whole = demo.tokenizer.encode(demo.chat_prompt(messages))
    # every earlier token came from the cache; the model saw the new turn and the reply
    assert two["cached_tokens"] == one["prompt_tokens"] + one["completion_tokens"] - 1
    assert model.fed - before == two["prompt_tokens"] + two["completion_tokens"] - 1
    assert two["prompt_tokens"] < len(whole) - two["cached_tokens"] + 2
    assert two["prompt_tokens"] < len(whole) / 2


def test_a_bad_setting_is_one_line():
    backend = LocalBackend("demo")
    with pytest.raises(BackendError, match="temperature must be"):
        reply(backend, [{"role": "user", "content": "hi"}], temperature=7)
