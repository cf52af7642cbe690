"""llm-core's model through the Triton kernels (under Triton's interpreter on CPU) gives the
logits, and the gradients, of the torch path: prefill, decode over a wrapping sink cache,
both position modes, GQA, a window with sinks and scaled RoPE."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from llm_core import ModelConfig, Transformer


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=61, n_embd=64, n_layer=2, n_head=4, n_kv_head=2, mlp="swiglu",
        intermediate_size=96, window_size=6, sink_tokens=2, max_seq_len=64,
        original_max_seq_len=32, rope_scaling={"type": "ntk"},
    )  # fmt: skip
    cfg.update(overrides)
    model = Transformer(ModelConfig(**cfg)).eval()
    for p in model.parameters():  # away from the init's ones and zeros, so norms matter
        p.data += 0.05 * torch.randn_like(p)
    return model


def _decode_logits(model, tokens, kind, position_mode="absolute"):
    """Prefill the first 5 tokens, then one token a step over a cache; every step's logits."""
    cache = model.new_cache(1, kind=kind, position_mode=position_mode if kind == "sink" else None)
    steps = [model(tokens[:, :5], cache=cache)[:, -1]]
    for t in range(5, tokens.shape[1]):
        steps.append(model(tokens[:, t : t + 1], cache=cache)[:, -1])
    return torch.stack(steps)  # (steps, 1, vocab)


def _counting(fn, name, calls):
    def counted(*args, **kwargs):
        calls[name] += 1
        return fn(*args, **kwargs)

    return counted


def _both(monkeypatch, fn, ops=("attention", "apply_rope", "rms_norm")):
    """``fn()`` with Triton's interpreter on, then off; checks that each of ``ops`` ran its
    Triton kernel in the first run and none did in the second."""
    import llm_kernels.triton as triton_ops

    calls = dict.fromkeys(("attention", "apply_rope", "rms_norm"), 0)
    for name in calls:
        monkeypatch.setattr(triton_ops, name, _counting(getattr(triton_ops, name), name, calls))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton_path = fn()
    assert all(calls[name] > 0 for name in ops), calls
    monkeypatch.delenv("TRITON_INTERPRET")
    ran = dict(calls)
    torch_path = fn()
    assert calls == ran, "a Triton kernel ran without the interpreter on a CPU tensor"
    return triton_path, torch_path


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prefill_logits_equal(dtype, monkeypatch):
    model = _model(dtype=dtype)
    tokens = torch.randint(0, 61, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = _both(monkeypatch, lambda: model(tokens).float())
    tol = {"float32": 1e-4, "bfloat16": 5e-2}[dtype]
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("position_mode", ["absolute", "cache"])
def test_decode_over_a_wrapping_sink_cache_logits_equal(position_mode, monkeypatch):
    model = _model()
    tokens = torch.randint(0, 61, (1, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = _both(monkeypatch, lambda: _decode_logits(model, tokens, "sink", position_mode))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_training_gradients_equal(monkeypatch):
    # RoPE and RMSNorm run their Triton backward kernels; attention (no backward kernel yet)
    # takes the torch path whenever gradients are needed
    model = _model(window_size=None, sink_tokens=0)
    model.train()
    tokens = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(3))

    def grads():
        model.zero_grad()
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    got, want = _both(monkeypatch, grads, ops=("apply_rope", "rms_norm"))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
