"""llm-tokenizer's Tokenizer and llm-core's Transformer satisfy llm-infer's protocols."""

from __future__ import annotations

import inspect

import torch
from llm_core import ModelConfig, Transformer
from llm_infer import protocols


def members(proto) -> set[str]:
    return {
        name
        for name, _ in inspect.getmembers(proto)
        if not name.startswith("_") and name in proto.__dict__
    }


def check(obj, proto) -> None:
    for name in members(proto):
        assert hasattr(obj, name), f"{type(obj).__name__} lacks {proto.__name__}.{name}"
        want = proto.__dict__[name]
        if inspect.isfunction(want):
            params = list(inspect.signature(want).parameters)[1:]
            have = inspect.signature(getattr(obj, name)).parameters
            for p in params:
                assert p in have, f"{type(obj).__name__}.{name} lacks parameter {p!r}"


def test_llm_tokenizer_satisfies_tokenizer(tokenizer):
    check(tokenizer, protocols.Tokenizer)
    check(tokenizer.decode_stream(), protocols.TextStream)
    assert isinstance(tokenizer.eos_token_ids, tuple)
    assert isinstance(tokenizer.encode("hi"), list)


def test_llm_core_transformer_satisfies_causal_lm():
    model = Transformer(ModelConfig(vocab_size=64, n_embd=32, n_layer=1, n_head=2, max_seq_len=32))
    check(model, protocols.CausalLM)
    check(model.config, protocols.ModelConfig)
    cache = model.new_cache(1, 8, kind="static")
    logits = model.forward(torch.tensor([[1, 2]]), cache, torch.tensor([[0, 1]]))
    assert logits.shape == (1, 2, 64)
