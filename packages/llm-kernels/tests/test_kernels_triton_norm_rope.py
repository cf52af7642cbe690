"""Triton RoPE (fused q+k, forward and backward) and RMSNorm (with the fused residual add)
against the torch references and their autograd gradients."""

from __future__ import annotations

import pytest
import torch
from llm_kernels import add_rms_norm, apply_rope, apply_rope_qk, reference, rms_norm, rope_cos_sin

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _inv_freq(D, base=10000.0, factor=1.0):
    """Llama's frequencies; ``factor`` > 1 divides them (linear scaling)."""
    return 1.0 / (base ** (torch.arange(0, D, 2).float() / D)) / factor


@pytest.mark.parametrize(
    "B,H,H_kv,T,D,dtype,table_batch,scaling",
    [
        (2, 5, 1, 13, 80, F32, False, 1.0),
        (1, 4, 2, 7, 64, BF16, True, 1.0),
        (2, 3, 3, 9, 16, F16, True, 1.2),  # YaRN-style magnitude factor on the tables
    ],
    ids=str,
)
def test_rope_qk_forward_and_backward(B, H, H_kv, T, D, dtype, table_batch, scaling,
                                      triton_device, assert_close):  # fmt: skip
    g = torch.Generator().manual_seed(D)
    q = torch.randn(B, H, T, D, generator=g).to(dtype).to(triton_device)  # (B, H, T, D)
    k = torch.randn(B, H_kv, T, D, generator=g).to(dtype).to(triton_device)  # (B, H_kv, T, D)
    pos = torch.randint(0, 5000, (B, T) if table_batch else (T,), generator=g)
    cos, sin = rope_cos_sin(pos.to(triton_device), _inv_freq(D, factor=2.0).to(triton_device),
                            scaling)  # fmt: skip
    dq_out = torch.randn(q.shape, generator=g).to(dtype).to(triton_device)
    dk_out = torch.randn(k.shape, generator=g).to(dtype).to(triton_device)

    qa, ka = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    got_q, got_k = apply_rope_qk(qa, ka, cos, sin)
    torch.autograd.backward((got_q, got_k), (dq_out, dk_out))
    qr, kr = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    want_q, want_k = reference.apply_rope(qr, cos, sin), reference.apply_rope(kr, cos, sin)
    torch.autograd.backward((want_q, want_k), (dq_out, dk_out))

    assert got_q.dtype == dtype and got_k.shape == k.shape
    assert_close(got_q, want_q, "rope q")
    assert_close(got_k, want_k, "rope k")
    assert_close(qa.grad, qr.grad, "rope dq")
    assert_close(ka.grad, kr.grad, "rope dk")
    assert_close(apply_rope(q, cos, sin), want_q, "rope of one tensor")


def test_rope_reads_strided_inputs(triton_device, assert_close):
    qkv = torch.randn(2, 6, 3, 4, 32).to(triton_device)  # (B, T, 3, H, D) a fused projection
    q = qkv[:, :, 0].transpose(1, 2)  # (B, H, T, D), strided
    cos, sin = rope_cos_sin(torch.arange(6).to(triton_device), _inv_freq(32).to(triton_device))
    assert_close(apply_rope(q, cos, sin), reference.apply_rope(q, cos, sin), "strided rope")


def test_rope_rejects_tables_that_do_not_fit(triton_device):
    q = torch.randn(1, 2, 5, 16, device=triton_device)
    cos, sin = rope_cos_sin(torch.arange(4).to(triton_device), _inv_freq(16).to(triton_device))
    with pytest.raises(ValueError, match="do not fit q"):
        apply_rope(q, cos, sin)


@pytest.mark.parametrize(
    "shape,dtype,w_dtype",
    [((5, 123), F32, F32), ((2, 3, 80), BF16, F32), ((7, 96), F16, F16), ((4, 64), BF16, BF16)],
    ids=str,
)
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "residual"])
def test_rms_norm_forward_and_backward(shape, dtype, w_dtype, fused, triton_device,
                                       assert_close):  # fmt: skip
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    x = torch.randn(shape, generator=g).to(dtype).to(triton_device)
    r = torch.randn(shape, generator=g).to(dtype).to(triton_device)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(w_dtype).to(triton_device)
    dy = torch.randn(shape, generator=g).to(triton_device)
    dh = torch.randn(shape, generator=g).to(dtype).to(triton_device)

    def run(impl):
        xa, ra, wa = (t.clone().requires_grad_(True) for t in (x, r, w))
        if fused:
            y, h = impl(xa, ra, wa)
            torch.autograd.backward((y, h), (dy.to(y.dtype), dh))
            return y, h, xa.grad, ra.grad, wa.grad
        y = impl(xa, wa)
        y.backward(dy.to(y.dtype))
        return y, None, xa.grad, None, wa.grad

    if fused:
        got = run(lambda a, b, c: add_rms_norm(a, b, c, 1e-5))
        want = run(lambda a, b, c: (reference.rms_norm(a + b, c, 1e-5), a + b))
    else:
        got = run(lambda a, c: rms_norm(a, c, 1e-5))
        want = run(lambda a, c: reference.rms_norm(a, c, 1e-5))
    assert got[0].dtype == torch.promote_types(dtype, w_dtype)
    for name, a, b in zip(("y", "h", "dx", "dresidual", "dweight"), got, want, strict=True):
        if b is not None:
            # the weight gradient sums over every row: looser, by its size
            tol = None if name != "dweight" or dtype == F32 else (5e-2, 5e-2)
            assert_close(a, b, f"rms_norm {name}", tol, dtype=dtype)


def test_rms_norm_rejects_a_weight_that_does_not_fit(triton_device):
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 8, device=triton_device), torch.ones(4, device=triton_device))
