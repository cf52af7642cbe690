"""``llm-kernels bench`` and ``benches/kernels.py``: each op's time, its throughput (TFLOP/s or
GB/s) and the ratio to its torch baseline, at the sizes of the issue's goals on CUDA.

On CUDA the Triton kernels are timed with ``triton.testing.do_bench`` (median, L2 flushed)
against FlexAttention, SDPA with an explicit mask, cuBLAS fp16 ``F.linear`` and the measured
copy bandwidth. On CPU the quantized GEMV paths that :func:`llm_kernels.quant.quant_linear`
dispatches to here (native int8-dot kernels, or dequantize + ``F.linear``), and aten's
``_weight_int8pack_mm``, are timed against float32 ``F.linear`` on the same shapes.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from llm_kernels import quant, reference
from llm_kernels.check import random_quantized


@dataclass
class BenchRow:
    op: str
    shape: str
    ms: float
    throughput: float  # TFLOP/s or GB/s, per ``unit``
    unit: str
    baseline: str
    baseline_ms: float | None
    goal: str = ""

    @property
    def speedup(self) -> float | None:
        """Baseline time over ours (above 1: ours is faster)."""
        return None if self.baseline_ms is None else self.baseline_ms / self.ms

    def as_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def time_ms(fn: Callable[[], object], device: str, repeats: int = 20) -> float:
    """Median milliseconds of ``fn()``: ``triton.testing.do_bench`` on CUDA, else a wall clock
    over ``repeats`` calls after two warm-up calls."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gb_s(device: str, mib: int = 1024) -> float:
    """Bytes read plus written per second by ``dst.copy_(src)`` of ``mib`` MiB."""
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / (time_ms(lambda: dst.copy_(src), device) * 1e-3) / 1e9


def _visible_pairs(T: int, window: int, sinks: int) -> int:
    """(query, key) pairs the rule lets through for a causal prefill of ``T`` tokens."""
    pairs = 0
    for p in range(T):
        pairs += min(p + 1, window) + max(0, min(sinks, p + 1 - window))
    return pairs


def gpu_benches(quick: bool = False, device: str = "cuda", tiny: bool = False) -> list[BenchRow]:
    """The issue's GPU goals (H100 / H200 sizes; ``quick``: smaller, for a smoke run;
    ``tiny`` with ``device="cpu"``: toy sizes under Triton's interpreter, to try the code)."""
    from llm_kernels import triton as tk

    dev, rows = device, []
    quick = quick or tiny
    mib = 1 if tiny else 256 if quick else 2048
    bw = copy_bandwidth_gb_s(dev, mib)
    copy_ms = 2 * mib * 2**20 / bw / 1e6
    rows.append(BenchRow("copy", f"{mib} MiB dst.copy_(src)", copy_ms, bw, "GB/s", "", None))
    bf16 = torch.bfloat16

    # sliding-window prefill: bf16, 16K tokens, window 4K, 4 sinks, head dim 128, GQA 32/8
    T, W, S, H, Hkv, D = (16384, 4096, 4, 32, 8, 128)
    if quick:
        T, W, H, Hkv = (48, 16, 2, 1) if tiny else (2048, 512, 8, 2)
    q = torch.randn(1, H, T, D, device=dev, dtype=bf16)
    k = torch.randn(1, Hkv, T, D, device=dev, dtype=bf16)
    v = torch.randn(1, Hkv, T, D, device=dev, dtype=bf16)
    pos = torch.arange(T, device=dev)
    ours = time_ms(lambda: tk.attention(q, k, v, pos, pos, window=W, sink_tokens=S), dev)
    flops = 4 * D * H * _visible_pairs(T, W, S)
    shape = f"T={T} W={W} sinks={S} H={H}/{Hkv} D={D} bf16"
    flex_ms = None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def rule(b, h, qi, ki):
            return (ki <= qi) & ((qi - ki < W) | (ki < S))

        if not tiny:  # compiling it on CPU takes minutes: not for a toy run
            block_mask = create_block_mask(rule, None, None, T, T, device=dev)
            flex = torch.compile(flex_attention)
            flex_ms = time_ms(lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True), dev)
    except Exception as e:  # FlexAttention missing or failing to compile here: say so
        shape += f" (FlexAttention: {type(e).__name__}: {e})"[:200]
    rows.append(BenchRow("attention prefill", shape, ours, flops / ours / 1e9, "TFLOP/s",
                         "FlexAttention", flex_ms, ">= 1.0x FlexAttention"))  # fmt: skip
    mask = reference.attention_mask(pos, pos, window=W, sink_tokens=S)  # (1, 1, T, T)
    sdpa_ms = time_ms(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), dev
    )
    rows.append(BenchRow("attention prefill", shape, ours, flops / ours / 1e9, "TFLOP/s",
                         "SDPA, explicit mask", sdpa_ms, ">= 1.5x SDPA"))  # fmt: skip

    # decode over a sink cache: the same work at any stream length
    cap = S + W
    kc = torch.randn(1, Hkv, cap, D, device=dev, dtype=bf16)
    vc = torch.randn(1, Hkv, cap, D, device=dev, dtype=bf16)
    qd = torch.randn(1, H, 1, D, device=dev, dtype=bf16)
    first = None
    for stream in (cap + 1, 65_536, 1_048_576)[: 2 if tiny else 3]:
        kp = torch.arange(cap)
        kp[S:] = stream - 1 - ((stream - 1 - S - torch.arange(cap - S)) % (cap - S))
        kp, qp = kp.to(dev), torch.tensor([stream], device=dev)
        ms = time_ms(lambda: tk.attention(qd, kc, vc, qp, kp, window=W, sink_tokens=S), dev)  # noqa: B023
        first = first or ms
        kv_bytes = 2 * Hkv * cap * D * 2
        rows.append(BenchRow("attention decode", f"stream {stream:,} cache {cap} H={H}/{Hkv}",
                             ms, kv_bytes / ms / 1e6, "GB/s", f"stream {cap + 1}", first,
                             "flat in the stream length"))  # fmt: skip

    # quantized GEMV/GEMM: 4096 x 14336 (out x in as Llama's down projection reads it)
    N, K = (64, 128) if tiny else (1024, 4096) if quick else (4096, 14336)
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(N, K, device=dev, dtype=torch.float16) * 0.02
    for M in (1, 16):
        x = torch.randn(M, K, device=dev, dtype=torch.float16)
        cublas = time_ms(lambda: F.linear(x, dense), dev)  # noqa: B023
        for name, format, group, goal in (
            ("W8A16 int8", "int8", 32, "weights at >= 80% of copy bandwidth (M=1)"),
            ("W4A16 q4 g128", "q4", 128, ">= 3x cuBLAS fp16 at M=1, >= 2.5x at M=16"),
            ("W4A16 q4 g32 mins", "q4", 32, ""),
            ("Q4_0", "q4_0", 32, ""),
            ("Q8_0", "q8_0", 32, ""),
        ):
            w = random_quantized(format, N, K, group, "mins" in name, g)
            w = {key: t.to(dev) if isinstance(t, torch.Tensor) else t for key, t in w.items()}
            wbytes = sum(
                t.numel() * t.element_size() for t in w.values() if isinstance(t, torch.Tensor)
            )
            ms = time_ms(
                functools.partial(quant.quant_linear, x, format=format, activations="float", **w),
                dev,
            )
            rows.append(BenchRow(name, f"M={M} {N}x{K}", ms, wbytes / ms / 1e6, "GB/s",
                                 "cuBLAS fp16", cublas, goal))  # fmt: skip
        w = random_quantized("int8", N, K, 32, False, g)
        w = {key: t.to(dev) for key, t in w.items()}
        ms = time_ms(
            functools.partial(quant.quant_linear, x, format="int8", activations="int8", **w), dev
        )
        rows.append(BenchRow("W8A8 int8", f"M={M} {N}x{K}", ms, 2 * M * N * K / ms / 1e9,
                             "TFLOP/s", "cuBLAS fp16", cublas))  # fmt: skip

    # RoPE and RMSNorm: memory bound, against the copy bandwidth
    T = 8 if tiny else 2048 if quick else 16384
    q = torch.randn(1, 32, T, 128, device=dev, dtype=bf16)  # (1, 32, T, 128)
    k = torch.randn(1, 8, T, 128, device=dev, dtype=bf16)  # (1, 8, T, 128)
    cos, sin = reference.rope_cos_sin(torch.arange(T, device=dev), torch.rand(64, device=dev))
    ms = time_ms(lambda: tk.apply_rope_qk(q, k, cos, sin), dev)
    nbytes = 2 * (q.numel() + k.numel()) * 2 + 2 * cos.numel() * 4
    ref_ms = time_ms(
        lambda: (reference.apply_rope(q, cos, sin), reference.apply_rope(k, cos, sin)), dev
    )
    rows.append(BenchRow("rope q+k", f"T={T} H=32/8 D=128 bf16", ms, nbytes / ms / 1e6, "GB/s",
                         "torch reference", ref_ms, ">= 80% of copy bandwidth"))  # fmt: skip
    x = torch.randn(T, 4096, device=dev, dtype=bf16)  # (T, 4096)
    r = torch.randn_like(x)
    wn = torch.ones(4096, device=dev, dtype=bf16)
    ms = time_ms(lambda: tk.rms_norm(x, wn), dev)
    ref_ms = time_ms(lambda: reference.rms_norm(x, wn), dev)
    rows.append(BenchRow("rms_norm", f"{T}x4096 bf16", ms, 2 * x.numel() * 2 / ms / 1e6, "GB/s",
                         "torch reference", ref_ms, ">= 80% of copy bandwidth"))  # fmt: skip
    ms = time_ms(lambda: tk.add_rms_norm(x, r, wn), dev)
    ref_ms = time_ms(lambda: reference.rms_norm(x + r, wn), dev)
    rows.append(BenchRow("add_rms_norm", f"{T}x4096 bf16", ms, 4 * x.numel() * 2 / ms / 1e6,
                         "GB/s", "torch add + reference", ref_ms, ">= 80% of copy bandwidth"))  # fmt: skip
    return rows


def cpu_benches(quick: bool = False) -> list[BenchRow]:
    """The quantized GEMV paths on CPU against float32 ``F.linear`` on the same shapes."""
    rows = []
    N, K = (1024, 1024) if quick else (4096, 4096)
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(N, K) * 0.02
    for M in (1, 4):
        x = torch.randn(M, K)
        base = time_ms(lambda: F.linear(x, dense), "cpu")  # noqa: B023
        for name, format, group in (
            ("int8", "int8", 32),
            ("q4 g32", "q4", 32),
            ("q4 g128 mins", "q4", 128),
            ("Q8_0", "q8_0", 32),
            ("Q4_0", "q4_0", 32),
            ("Q4_1", "q4_1", 32),
        ):
            w = random_quantized(format, N, K, group, "mins" in name, g)
            wbytes = sum(
                t.numel() * t.element_size() for t in w.values() if isinstance(t, torch.Tensor)
            )
            ms = time_ms(lambda: quant.quant_linear(x, format=format, **w), "cpu")  # noqa: B023
            rows.append(BenchRow(f"quant_linear {name}", f"M={M} {N}x{K} fp32", ms,
                                 wbytes / ms / 1e6, "GB/s", "F.linear fp32", base))  # fmt: skip
        w8 = random_quantized("int8", N, K, 32, False, g)
        try:
            ms = time_ms(lambda: torch._weight_int8pack_mm(x, w8["qweight"], w8["scales"]), "cpu")  # noqa: B023
        except RuntimeError:
            continue
        rows.append(BenchRow("aten _weight_int8pack_mm", f"M={M} {N}x{K} fp32", ms,
                             N * K / ms / 1e6, "GB/s", "F.linear fp32", base))  # fmt: skip
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """The rows as a fixed-width text table."""
    head = f"{'op':<26} {'shape':<40} {'ms':>9} {'throughput':>16} {'vs':>7}  baseline / goal"
    lines = [head, "-" * len(head)]
    for r in rows:
        vs = "" if r.speedup is None else f"{r.speedup:.2f}x"
        tp = f"{r.throughput:,.1f} {r.unit}"
        note = r.baseline + (f"  [goal: {r.goal}]" if r.goal else "")
        lines.append(f"{r.op:<26} {r.shape:<40} {r.ms:>9.4f} {tp:>16} {vs:>7}  {note}")
    return "\n".join(lines)
