"""Shared references for llm-kernels' tests."""

from __future__ import annotations

import importlib.util

import pytest
import torch

# The package's tests run with torch, triton and pytest alone (the GPU machine has nothing
# else); the files that compare against HF transformers, hypothesis or numpy are left out
# where those are missing.
collect_ignore = [
    name
    for name, needs in (
        ("test_kernels_reference.py", ("transformers", "hypothesis")),
        ("test_quant_reference.py", ("numpy",)),
    )
    if any(importlib.util.find_spec(module) is None for module in needs)
]


def _hf_attention(q, k, v, mask, scale=None):
    """HF transformers' eager attention (GQA through its ``repeat_kv``) in float64, with the
    additive form of our boolean ``mask``, back in ``q.dtype``; a query that sees no key gets
    zeros (our rule; HF's softmax would give NaN)."""
    hf = pytest.importorskip("transformers.models.llama.modeling_llama")
    module = torch.nn.Module()
    module.num_key_value_groups = q.shape[1] // k.shape[1]
    module.training = False
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    additive = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    out, _ = hf.eager_attention_forward(
        module, q.double(), k.double(), v.double(), additive, scaling=scale
    )
    return out.transpose(1, 2).nan_to_num(0.0).to(q.dtype)  # HF returns (B, T, H, D)


@pytest.fixture
def hf_attention():
    """``hf_attention(q, k, v, mask, scale=None)``: the reference attention of HF transformers."""
    return _hf_attention


@pytest.fixture
def triton_device(monkeypatch):
    """Where the Triton kernels run in this test: ``"cuda"`` (compiled) on a machine with a GPU,
    else ``"cpu"`` under Triton's interpreter. ``TRITON_INTERPRET=1`` is set for this test
    alone: the kernels read it at each launch (``llm_kernels.triton.interpreting``), so
    nothing outlives the test."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"


# absolute and relative tolerance of a kernel's output against a float32/float64 reference,
# by the output dtype: one rounding of the result plus float32 accumulation in another order
# (the interpreter also truncates to bfloat16 instead of rounding)
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def _assert_close(actual, expected, what="", tol=None, dtype=None):
    """``torch.testing.assert_close`` with the tolerance of ``dtype`` (default: ``actual``'s,
    else an explicit ``tol=(atol, rtol)``); the message names the op, the worst mismatch
    (index, both values) and the dtype."""
    atol, rtol = tol or TOLERANCES[dtype or actual.dtype]
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    diff = (a - e).abs()
    if diff.numel() and not torch.isfinite(diff).all():
        bad = torch.nonzero(~torch.isfinite(diff))[0].tolist()
        raise AssertionError(f"{what}: non-finite at {bad}: {a[tuple(bad)]} vs {e[tuple(bad)]}")
    excess = diff - (atol + rtol * e.abs())
    if diff.numel() and excess.max() > 0:
        idx = tuple(torch.nonzero(excess == excess.max())[0].tolist())
        raise AssertionError(
            f"{what} ({actual.dtype}): worst mismatch at {idx}: {a[idx].item():.6g} vs "
            f"{e[idx].item():.6g} (|diff| {diff[idx].item():.3e}, atol {atol}, rtol {rtol}); "
            f"max |diff| {diff.max().item():.3e} over {diff.numel()} values"
        )


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected, what, tol=None, dtype=None)``: per-dtype tolerance,
    worst mismatch printed on failure."""
    return _assert_close
