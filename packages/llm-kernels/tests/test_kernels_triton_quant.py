"""Triton quantized products (W8A16, W8A8, W4A16, GGUF Q8_0/Q4_0/Q4_1 blocks) against the
reference dequantizers (bit for bit gguf-py's, tested in test_quant_reference.py) and
float64 products, through :func:`llm_kernels.quant.quant_linear`."""

from __future__ import annotations

import pytest
import torch
from llm_kernels import quant

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _weight(format, n, k, group, with_mins, g):
    """Random quantized weights in ``format``: ``quant.quant_linear``'s keyword arguments."""
    blocks = k // 32

    def half(*shape, low=0.001, high=0.05):
        return (torch.rand(*shape, generator=g) * (high - low) + low).to(F16)

    def raw(*shape):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    if format == "q8_0":
        q = torch.randint(-127, 128, (n, blocks, 32), generator=g, dtype=torch.int8)
        d = half(n, blocks, 1).view(torch.uint8)  # (n, blocks, 2) fp16 bytes
        return {"qweight": torch.cat((d, q.view(torch.uint8)), -1).reshape(n, -1)}
    if format == "q4_0":
        d = half(n, blocks, 1).view(torch.uint8)
        return {"qweight": torch.cat((d, raw(n, blocks, 16)), -1).reshape(n, -1)}
    if format == "q4_1":
        dm = torch.cat((half(n, blocks, 1), -half(n, blocks, 1, high=0.4)), -1).view(torch.uint8)
        return {"qweight": torch.cat((dm, raw(n, blocks, 16)), -1).reshape(n, -1)}
    if format == "int8":
        q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        return {"qweight": q, "scales": torch.rand(n, generator=g) * 0.05 + 0.001}
    mins = -half(n, k // group, high=0.4) if with_mins else None
    return {"qweight": raw(n, k // 2), "scales": half(n, k // group), "mins": mins,
            "group_size": group}  # fmt: skip


def _on(device, weight):
    return {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in weight.items()}


# format, group, mins, M, N, K, activation dtype
CASES = [
    ("int8", 32, False, 1, 37, 160, F32),
    ("int8", 32, False, 5, 19, 96, BF16),
    ("q4", 32, False, 1, 13, 128, F16),
    ("q4", 64, True, 3, 21, 192, F32),
    ("q4", 128, False, 17, 11, 256, BF16),
    ("q4", 128, True, 2, 9, 384, F16),
    ("q8_0", 32, False, 1, 23, 96, F32),
    ("q4_0", 32, False, 4, 17, 160, F16),
    ("q4_1", 32, True, 1, 29, 128, BF16),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_only_products_match_the_dequantized_product(case, triton_device, assert_close):
    format, group, with_mins, M, N, K, dtype = case
    g = torch.Generator().manual_seed(M * 1000 + N)
    w = _weight(format, N, K, group, with_mins, g)
    x = torch.randn(M, K, generator=g)
    bias = torch.randn(N, generator=g) if M > 2 else None
    dense = quant.dequantize(
        w["qweight"], format, scales=w.get("scales"), mins=w.get("mins"), group_size=group
    )  # fmt: skip  (N, K) float32
    # the exact product of the activations as the kernel sees them (rounded to dtype)
    want = x.to(dtype).double() @ dense.double().T + (0 if bias is None else bias.double())
    got = quant.quant_linear(
        x.to(dtype).to(triton_device), format=format, bias=None if bias is None else
        bias.to(dtype).to(triton_device), activations="float", **_on(triton_device, w)
    )  # fmt: skip
    assert got.shape == (M, N) and got.dtype == dtype
    # half dtypes: the dequantized weight is rounded to the activations' dtype in registers
    scale = want.abs().max().item()
    atol, rtol = {F32: (1e-5 * scale, 1e-5), F16: (4e-3 * scale, 4e-3), BF16: (3e-2 * scale, 2e-2)}[
        dtype
    ]
    assert_close(got, want.to(dtype), f"{format} W{'8' if '8' in format else '4'}A16", (atol, rtol))


def test_leading_dims_and_a_strided_input(triton_device, assert_close):
    g = torch.Generator().manual_seed(3)
    w = _weight("q4", 12, 128, 64, True, g)
    x = torch.randn(2, 3, 256, generator=g)[..., ::2]  # (2, 3, 128), stride 2 along K
    dense = quant.dequantize(w["qweight"], "q4", scales=w["scales"], mins=w["mins"], group_size=64)
    got = quant.quant_linear(x.to(triton_device), format="q4", activations="float",
                             **_on(triton_device, w))  # fmt: skip
    assert got.shape == (2, 3, 12)
    assert_close(got, (x.double() @ dense.double().T).float(), "q4 strided", (1e-4, 1e-5))


def _per_token_reference(x):
    """Per-token symmetric int8, written out in torch: the W8A8 activations."""
    s = x.float().abs().amax(-1) / 127.0  # (M,)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(x.float() / s[:, None]).to(torch.int8), s


@pytest.mark.parametrize("M,N,K,dtype", [(1, 37, 160, F32), (6, 20, 96, BF16), (17, 9, 64, F16)])
def test_w8a8_is_exact_integer_arithmetic_on_per_token_int8_activations(
    M, N, K, dtype, triton_device, assert_close
):
    g = torch.Generator().manual_seed(M)
    w = _weight("int8", N, K, 32, False, g)
    x = torch.randn(M, K, generator=g).to(dtype)
    x[0, :3] = torch.tensor([0.5, -1.5, 2.5]).to(dtype) * x[0].float().abs().max().to(dtype) / 127
    xq, xs = _per_token_reference(x)
    from llm_kernels.triton import quantize_per_token

    got_q, got_s = quantize_per_token(x.to(triton_device))
    assert torch.equal(got_q.cpu(), xq), "per-token int8 activations differ from torch.round's"
    assert_close(got_s, xs, "activation scales")
    ints = xq.long() @ w["qweight"].long().T  # (M, N) exact
    want = ints.double() * xs.double()[:, None] * w["scales"].double()[None, :]
    got = quant.quant_linear(x.to(triton_device), format="int8", activations="int8-token",
                             **_on(triton_device, w))  # fmt: skip
    assert_close(got, want.to(dtype), "W8A8", dtype=dtype)


def test_int8_activations_only_with_the_int8_format_and_never_on_other_layouts(triton_device):
    from llm_kernels.triton import quant_linear

    w = _weight("q4", 4, 64, 32, False, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="W8A8"):
        quant_linear(torch.randn(1, 64, device=triton_device), format="q4",
                     int8_activations=True, **_on(triton_device, w))  # fmt: skip


@pytest.mark.peers
def test_gguf_blocks_quantized_by_gguf_py(triton_device, assert_close):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    g = torch.Generator().manual_seed(5)
    dense = torch.randn(7, 96, generator=g)
    x = torch.randn(2, 96, generator=g)
    for name in ("Q8_0", "Q4_0", "Q4_1"):
        qtype = gguf.GGMLQuantizationType[name]
        blocks = torch.from_numpy(gguf.quants.quantize(dense.numpy(), qtype).view(np.uint8))
        theirs = torch.from_numpy(gguf.quants.dequantize(blocks.numpy(), qtype).copy())
        got = quant.quant_linear(x.to(triton_device), blocks.to(triton_device), name.lower(),
                                 activations="float")  # fmt: skip
        assert_close(got, x @ theirs.T, f"{name} from gguf-py", (1e-4, 1e-5))
