"""The compiled decode step: the same tokens as HF ``generate``, a few compiled cache sizes."""

from __future__ import annotations

import pytest
import torch
from llm_core.errors import CacheFullError
from llm_infer import Session, load
from llm_infer.compiled import MIN_CAPACITY, CompiledDecoder, compiled_capacity


def test_compiled_capacity_buckets():
    assert compiled_capacity(1, 2048) == MIN_CAPACITY
    assert compiled_capacity(MIN_CAPACITY + 1, 2048) == 2 * MIN_CAPACITY
    assert compiled_capacity(1500, 2048) == 2048
    assert compiled_capacity(300, 300) == 300  # never beyond the context, never below the need
    assert compiled_capacity(100, 64) == 100


def test_compiled_decoder_refuses_other_caches(llm):
    cache = llm.model.new_cache(1, kind="sink", window=8)
    with pytest.raises(TypeError, match="StaticKVCache"):
        CompiledDecoder(llm.model)(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1), cache)


def test_compiled_generate_matches_hf_generate(make_hf_dir, tokenizer, hf_greedy):
    path = make_hf_dir("llama", seed=1)
    llm = load(path, compile=True)
    prompt = tokenizer.encode("def wrap(text, width=70):")
    want = hf_greedy(path, prompt, 64)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got = llm.generate(prompt, temperature=0, max_tokens=64, min_tokens=64)
    assert got.token_ids == want
    # one graph for every step: the number of tokens held is a dynamic dimension
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    # another request of another length: the same compiled step, the eager path's tokens
    eager = load(path).generate(prompt[:5], temperature=0, max_tokens=20, min_tokens=20)
    again = llm.generate(prompt[:5], temperature=0, max_tokens=20, min_tokens=20)
    assert again.token_ids == eager.token_ids
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    # the cache's own bookkeeping still guards its capacity
    with torch.inference_mode():  # inference tensors, as in generate: the same graph
        one = torch.ones(1, 1, dtype=torch.long)
        cache = llm.model.new_cache(1, MIN_CAPACITY)
        llm.model.forward(torch.ones(1, MIN_CAPACITY - 1, dtype=torch.long), cache)
        llm.step(one, torch.tensor([[MIN_CAPACITY - 1]]), cache)
        with pytest.raises(CacheFullError):
            llm.step(one, torch.tensor([[MIN_CAPACITY]]), cache)

    # a session on a static cache of the same capacity decodes through the same compiled
    # step, turn after turn, and says what the eager session says
    eager_session = Session(load(path), capacity=MIN_CAPACITY)
    session = Session(llm, capacity=MIN_CAPACITY)
    for text in ("first question", "and a second"):
        want = eager_session.send(text, temperature=0, max_tokens=12, min_tokens=12)
        got = session.send(text, temperature=0, max_tokens=12, min_tokens=12)
        assert got.token_ids == want.token_ids
        assert got.usage.cached_tokens == want.usage.cached_tokens
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
