"""The native quantized products against their dequantized references in float64, on odd
shapes, 1 to 16 rows, and any number of threads; their dispatch and its torch fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from llm_kernels import native, quant, reference

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.error}"
)

# (format, group_size, with mins): every layout the kernel reads
LAYOUTS = [
    ("q8_0", 32, False),
    ("q4_0", 32, False),
    ("q4_1", 32, True),
    ("int8", 32, False),
    ("q4", 32, False),
    ("q4", 64, True),
    ("q4", 128, False),
    ("q4", 128, True),
]
# N not a multiple of 8, K not of 256 (those not a multiple of a layout's group are skipped)
SHAPES = [(13, 128), (37, 160), (5, 384), (67, 544), (3, 96)]


def random_weight(format: str, n: int, k: int, group: int, with_mins: bool, seed: int) -> dict:
    """Random quantized weights of ``format``: the arguments of ``quant.quant_linear``."""
    g = torch.Generator().manual_seed(seed)
    blocks = k // 32

    def half(*shape, low=0.001, high=0.05):
        return (torch.rand(*shape, generator=g) * (high - low) + low).to(torch.float16)

    def nibbles(*shape):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    if format == "q8_0":
        q = torch.randint(-127, 128, (n, blocks, 32), generator=g, dtype=torch.int8)
        d = half(n, blocks, 1).view(torch.uint8)  # (n, blocks, 2)
        qweight = torch.cat((d, q.view(torch.uint8)), -1).reshape(n, -1)
        return {"qweight": qweight}
    if format == "q4_0":
        d = half(n, blocks, 1).view(torch.uint8)
        return {"qweight": torch.cat((d, nibbles(n, blocks, 16)), -1).reshape(n, -1)}
    if format == "q4_1":
        dm = torch.cat((half(n, blocks, 1), -half(n, blocks, 1, high=0.4)), -1)
        return {
            "qweight": torch.cat((dm.view(torch.uint8), nibbles(n, blocks, 16)), -1).reshape(n, -1)
        }
    if format == "int8":
        q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        return {"qweight": q, "scales": torch.rand(n, generator=g) * 0.05 + 0.001}
    mins = -half(n, k // group, high=0.4) if with_mins else None
    return {
        "qweight": nibbles(n, k // 2),
        "scales": half(n, k // group),
        "mins": mins,
        "group_size": group,
    }


def dequantized(format: str, w: dict) -> torch.Tensor:
    return quant.dequantize(
        w["qweight"],
        format,
        scales=w.get("scales"),
        mins=w.get("mins"),
        group_size=w.get("group_size", 32),
    )


def quantized_activations(x: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """What the kernel's int8 modes multiply by: ``x`` rounded per block of 32 (or per row) to
    ``dx * round(x / dx)``, ``dx = amax / 127``, ties away from zero, in float32 as the
    kernel computes it."""
    xb = x.reshape(*x.shape[:-1], -1, 32)  # (..., K/32, 32)
    amax = xb.abs().amax(-1, keepdim=True)  # (..., K/32, 1)
    if per_row:
        amax = amax.amax(-2, keepdim=True).expand(amax.shape)
    d = amax / 127  # (..., K/32, 1)
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    xs = (xb * inv).double()
    q = torch.sign(xs) * torch.floor(xs.abs() + 0.5)
    return (q * d.double()).reshape(x.shape)


def int16_activations(x: torch.Tensor) -> torch.Tensor:
    """What the kernel's int16 mode multiplies by: ``x`` rounded per block of 32 to
    ``dx * round(x / dx)``, ``dx = amax / 32767`` (float32), ``x / dx`` divided in float32,
    ties away from zero, clamped to +-32767."""
    xb = x.reshape(*x.shape[:-1], -1, 32)  # (..., K/32, 32)
    d = xb.abs().amax(-1, keepdim=True) / 32767  # (..., K/32, 1)
    xs = torch.where(d != 0, xb / d, torch.zeros_like(xb)).double()
    q = (torch.sign(xs) * torch.floor(xs.abs() + 0.5)).clamp(-32767, 32767)
    return (q * d.double()).reshape(x.shape)


def int16_bound(x: torch.Tensor, wd: torch.Tensor) -> torch.Tensor:
    """The most int16 activations can move each output: every value rounds by at most half a
    step, ``dx / 2 = amax / 65534`` of its block, so ``|y - x @ W.T|`` is at most
    ``sum_j amax(block of j) / 65534 * |W[:, j]|``; ``(rows, N)`` in float64."""
    xb = x.double().reshape(*x.shape[:-1], -1, 32)
    half_step = (xb.abs().amax(-1, keepdim=True) / 65534).expand(xb.shape).reshape(x.shape)
    return half_step @ wd.abs().T


def worst(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor) -> str:
    err = ((got.double() - want) / scale).abs()
    i = int(err.argmax())
    return f"worst error {err.max().item():.3g} of the scale at flat index {i}: got {got.flatten()[i].item()!r}, want {want.flatten()[i].item()!r}"


@needs_native
@pytest.mark.parametrize(("format", "group", "with_mins"), LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activations", ["float", "int8", "int8-token", "int16"])
def test_quant_rows_matches_the_dequantized_reference(format, group, with_mins, shape, activations):
    """Against the dequantized weight times the activations the kernel multiplies by (1 to 16
    rows, and 37: a prompt in three passes, int8 switched to float there); int16 also against
    the exact product, within the rounding of its activations."""
    n, k = shape
    if k % group:
        pytest.skip(f"K={k} is not a multiple of group {group}")
    w = random_weight(format, n, k, group, with_mins, seed=n * k)
    wd = dequantized(format, w).double()  # (N, K)
    bias = torch.randn(n)
    for rows in (1, 2, 5, 16, 37):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        got = quant.quant_linear(x, format=format, bias=bias, activations=activations, **w)
        if activations == "float" or (activations == "int8" and rows > native.MAX_ROWS):
            xr = x.double()
        elif activations == "int16":
            xr = int16_activations(x)
        else:
            xr = quantized_activations(x, per_row=activations == "int8-token")
        want = xr @ wd.T + bias.double()  # (rows, N)
        scale = x.double().abs() @ wd.abs().T + 1  # (rows, N): the size of each sum's terms
        err = ((got.double() - want) / scale).abs().max().item()
        assert got.shape == (rows, n) and err < 2e-6, f"{rows} rows: {worst(got, want, scale)}"
        if activations == "int16":
            exact = x.double() @ wd.T + bias.double()
            over = (got.double() - exact).abs() - int16_bound(x, wd) - 2e-6 * scale
            assert over.max().item() <= 0, f"{rows} rows: {worst(got, exact, scale)}"


@needs_native
@pytest.mark.parametrize(("format", "group", "with_mins"), [LAYOUTS[0], LAYOUTS[2], LAYOUTS[5]])
def test_int8_activations_error_against_the_float_product(format, group, with_mins):
    """The error that quantizing activations adds: under 1% of the terms' scale per block of
    32 (about 0.07% at most here), more per token; int16 per block 258 times finer (127 /
    32767 of int8's steps); float activations: 1e-6."""
    n, k = 64, 1024
    w = random_weight(format, n, k, group, with_mins, seed=1)
    wd = dequantized(format, w).double()
    x = torch.randn(4, k, generator=torch.Generator().manual_seed(2))
    want = x.double() @ wd.T
    scale = (x.double().abs() @ wd.abs().T).mean()
    errors = {}
    for mode in ("float", "int8", "int8-token", "int16"):
        got = quant.quant_linear(x, format=format, activations=mode, **w)
        errors[mode] = ((got.double() - want).abs().max() / scale).item()
    assert errors["float"] < 1e-6 and errors["int8"] < 1e-2 and errors["int8-token"] < 3e-2, errors
    assert errors["int16"] < 1e-2 / 258, errors
    assert errors["int8"] < errors["int8-token"], errors


@needs_native
@pytest.mark.parametrize(("format", "group", "with_mins"), LAYOUTS)
def test_int16_activations_are_closer_to_the_exact_product_than_int8(format, group, with_mins):
    """Random weights and activations (outliers included): int16's worst error against the
    float64 product is under a 100th of int8's in every row (their steps differ 258-fold;
    140 to 420 times here)."""
    n, k = 96, 512
    w = random_weight(format, n, k, group, with_mins, seed=11)
    wd = dequantized(format, w).double()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, k, generator=g) * torch.rand(6, k, generator=g).pow(4) * 10
    want = x.double() @ wd.T
    errors = {}
    for mode in ("int8", "int16"):
        got = quant.quant_linear(x, format=format, activations=mode, **w)
        errors[mode] = (got.double() - want).abs().amax(-1)  # (rows,)
    assert (errors["int16"] * 100 < errors["int8"]).all(), errors


@needs_native
def test_int16_activations_of_zero_tiny_and_huge_blocks():
    """A row of values so small that 1 / dx would overflow and dx is subnormal (x / dx past
    32767: clamped), with a block of zeros; subnormal values and values near float32's
    largest in another: the reference's rounding, nothing infinite. The tiny row's scaling
    (d dx, subnormal) keeps only a few bits."""
    w = random_weight("q4_0", 8, 160, 32, False, seed=13)
    wd = dequantized("q4_0", w).double()
    x = torch.randn(3, 160, generator=torch.Generator().manual_seed(14))
    x[0] *= 1e-37
    x[0, :32] = 0
    x[1, :32] *= 1e-41
    x[1, 64:96] *= 1e36
    got = quant.quant_linear(x, format="q4_0", activations="int16", **w)
    want = int16_activations(x) @ wd.T
    scale = x.double().abs() @ wd.abs().T
    assert torch.isfinite(got).all()
    err = ((got.double() - want) / scale).abs().amax(-1)  # (3,)
    assert err[0] < 1e-2 and err[1:].max() < 2e-6, err


@needs_native
def test_int8_activations_of_tiny_blocks_are_finite_and_rounded():
    """Blocks so small that 1 / dx overflows (dx subnormal): divided instead, so the product
    is finite and near the exact one, not infinities or NaNs rounded to arbitrary ints."""
    w = random_weight("q8_0", 8, 96, 32, False, seed=15)
    wd = dequantized("q8_0", w).double()
    x = torch.randn(2, 96, generator=torch.Generator().manual_seed(16))
    x[0] *= 1e-38
    x[0, :32] = 0
    got = quant.quant_linear(x, format="q8_0", activations="int8", **w)
    want = x.double() @ wd.T
    scale = x.double().abs() @ wd.abs().T
    assert torch.isfinite(got).all()
    err = ((got.double() - want) / scale).abs().amax(-1)  # (2,)
    assert err[0] < 5e-2 and err[1] < 1e-2, err


@needs_native
@pytest.mark.parametrize(
    ("format", "group", "with_mins"), [LAYOUTS[0], LAYOUTS[1], LAYOUTS[2], LAYOUTS[6]]
)
@pytest.mark.parametrize("rows", [1, 3])
def test_quant_rows_is_the_same_on_any_number_of_threads(format, group, with_mins, rows):
    n, k = 2003, 384  # about 0.4-0.8 MB: shared between threads, the last chunk partial
    w = random_weight(format, n, k, group, with_mins, seed=3)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(4))
    before = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            for mode in ("float", "int8", "int8-token", "int16"):
                results[threads, mode] = quant.quant_linear(x, format=format, activations=mode, **w)
    finally:
        torch.set_num_threads(before)
    for (threads, mode), got in results.items():
        diff = (got - results[1, mode]).abs().max().item()
        assert torch.equal(got, results[1, mode]), f"{threads} threads, {mode}: differs by {diff}"


@pytest.mark.parametrize(("format", "group", "with_mins"), LAYOUTS)
def test_quant_linear_falls_back_to_torch_for_long_inputs(format, group, with_mins):
    n, k = 24, 128
    w = random_weight(format, n, k, group, with_mins, seed=5)
    x = torch.randn(2, 20, k)  # 40 rows: more than the kernel takes
    got = quant.quant_linear(x, format=format, **w)
    want = F.linear(x.double(), dequantized(format, w).double()).float()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_quant_linear_without_native_kernels_is_the_dequantized_product(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    w = random_weight("q4", 10, 64, 64, True, seed=6)
    x = torch.randn(1, 64)
    want = F.linear(x.double(), dequantized("q4", w).double()).float()
    torch.testing.assert_close(quant.quant_linear(x, format="q4", **w), want)


def test_quant_linear_rejects_bad_inputs():
    w = random_weight("q8_0", 4, 64, 32, False, seed=7)
    with pytest.raises(ValueError, match="unknown quantized format"):
        quant.quant_linear(torch.randn(1, 64), w["qweight"], "q5_0")
    with pytest.raises(ValueError, match=r"qweight must be torch.uint8 \[N, 68\]"):
        quant.quant_linear(torch.randn(1, 64), w["qweight"][:, :34], "q8_0")
    with pytest.raises(ValueError, match="not a multiple of 32"):
        quant.quant_linear(torch.randn(1, 48), w["qweight"], "q8_0")
    with pytest.raises(ValueError, match="activations must be"):
        quant.quant_linear(torch.randn(1, 64), activations="int4", **w, format="q8_0")
    q4 = random_weight("q4", 4, 128, 64, False, seed=8)
    with pytest.raises(ValueError, match=r"scales must be float16 \[4, 2\]"):
        quant.quant_linear(
            torch.randn(1, 128), q4["qweight"], "q4", scales=q4["scales"].float(), group_size=64
        )


@needs_native
def test_quant_rows_rejects_an_unknown_activations_code():
    w = random_weight("q4_0", 4, 64, 32, False, seed=15)
    with pytest.raises(RuntimeError, match="activations must be 0, 1, 2 or 3, got 4"):
        torch.ops.llm_kernels.quant_rows.default(
            torch.randn(1, 64), w["qweight"], None, None, 1, 32, None, 4
        )


def test_torch_fallback_rounds_per_token_activations_as_the_kernel(monkeypatch):
    w = random_weight("int8", 16, 64, 32, False, seed=9)
    x = torch.randn(3, 64)
    had_native = native.available()
    native_y = quant.quant_linear(x, format="int8", activations="int8-token", **w)
    monkeypatch.setattr(native, "available", lambda: False)
    torch_y = quant.quant_linear(x, format="int8", activations="int8-token", **w)
    want = quantized_activations(x, per_row=True) @ dequantized("int8", w).double().T
    torch.testing.assert_close(torch_y.double(), want, atol=1e-5, rtol=1e-5)
    if had_native:
        torch.testing.assert_close(native_y, torch_y, atol=1e-5, rtol=1e-5)


# N multiples of 8 (interleaved blocks come in groups of eight rows); K any multiple of 32
X8_SHAPES = [(8, 32), (16, 160), (40, 384), (72, 544)]


@pytest.mark.parametrize("kind", ["q4_0", "q4_1"])
def test_interleave8_is_a_reordering_of_the_blocks(kind):
    n, k = 24, 96
    w = random_weight(kind, n, k, 32, kind == "q4_1", seed=7)["qweight"]
    x8 = reference.interleave8(w, k, kind)
    assert x8.shape == w.shape and x8.dtype == torch.uint8
    assert torch.equal(reference.deinterleave8(x8, k, kind + "x8"), w)
    assert torch.equal(x8.flatten().sort().values, w.flatten().sort().values)
    assert not torch.equal(x8, w)
    # the first block of rows 0-7: the eight d first, then row 1's first four bytes at 4 .. 8
    # of the first group of values
    head = 2 if kind == "q4_0" else 4
    assert torch.equal(x8[0, 2:4], w[1, :2])
    values = 16 * (head // 2)
    assert torch.equal(x8[0, values + 4 : values + 8], w[1, head : head + 4])
    assert torch.equal(quant.dequantize(x8, kind + "x8"), quant.dequantize(w, kind))
    with pytest.raises(ValueError, match="multiple of 8"):
        reference.interleave8(w[:12], k, kind)
    with pytest.raises(ValueError, match="only q4_0 and q4_1"):
        reference.interleave8(w, k, "q8_0")


@needs_native
@pytest.mark.parametrize("kind", ["q4_0", "q4_1"])
@pytest.mark.parametrize("shape", X8_SHAPES)
@pytest.mark.parametrize("activations", ["float", "int8", "int8-token", "int16"])
def test_interleaved_blocks_match_the_dequantized_reference(kind, shape, activations):
    """As test_quant_rows_matches_the_dequantized_reference, for q4_0x8 / q4_1x8 (int16 takes
    the dequantized weight: the exact product)."""
    n, k = shape
    w = random_weight(kind, n, k, 32, kind == "q4_1", seed=n * k)["qweight"]
    x8 = reference.interleave8(w, k, kind)
    wd = dequantized(kind, {"qweight": w}).double()  # (N, K)
    bias = torch.randn(n)
    for rows in (1, 2, 5, 16, 37):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        got = quant.quant_linear(x, x8, kind + "x8", bias=bias, activations=activations)
        exact = activations in ("float", "int16") or (
            activations == "int8" and rows > native.MAX_ROWS
        )
        xr = x.double() if exact else quantized_activations(x, activations == "int8-token")
        want = xr @ wd.T + bias.double()
        scale = x.double().abs() @ wd.abs().T + 1
        err = ((got.double() - want) / scale).abs().max().item()
        assert got.shape == (rows, n) and err < 2e-6, f"{rows} rows: {worst(got, want, scale)}"


@needs_native
@pytest.mark.parametrize("kind", ["q4_0", "q4_1"])
@pytest.mark.parametrize("rows", [1, 3])
def test_interleaved_blocks_are_the_same_on_any_number_of_threads(kind, rows):
    n, k = 2000, 384  # shared between threads in groups of eight rows
    w = reference.interleave8(random_weight(kind, n, k, 32, True, seed=3)["qweight"], k, kind)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(4))
    before = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            for mode in ("float", "int8", "int8-token"):
                results[threads, mode] = quant.quant_linear(x, w, kind + "x8", activations=mode)
    finally:
        torch.set_num_threads(before)
    for (threads, mode), got in results.items():
        assert torch.equal(got, results[1, mode]), f"{threads} threads, {mode}"


@needs_native
def test_quant_rows_refuses_interleaved_blocks_it_cannot_read():
    w = reference.interleave8(
        random_weight("q4_1", 16, 64, 32, True, seed=1)["qweight"], 64, "q4_1"
    )
    x = torch.randn(1, 64)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        torch.ops.llm_kernels.quant_rows(x, w[:12], None, None, 6, 32, None, 1)
    with pytest.raises(RuntimeError, match="float or int8 activations"):
        torch.ops.llm_kernels.quant_rows(x, w, None, None, 6, 32, None, 3)
    with pytest.raises(ValueError, match="multiple of 8"):
        quant.quant_linear(x, w[:12], "q4_1x8")
