"""Quantized products, one process, interleaved: which native arithmetic to keep, and the
torch baselines to beat.

    uv run --frozen python benches/quant_kernels.py [--threads 2] [--rounds 7] [--rows 1,4]

For the llama-125m shape's products (768 -> 768, 768 -> 2048, 2048 -> 768, 768 -> 32000) in
each layout (GGUF Q8_0 / Q4_0 / Q4_1, the project's int8 and q4 group 64), it times the native
kernel with int8, int16 and float activations, torch's packed ops on the same values
(``_weight_int8pack_mm`` for int8, ``_weight_int4pack_mm_for_cpu`` for Q4_0's values as group
32 with zero 0) and the float32 product (``llm_kernels.linear``). The variants run round-robin
(``--rounds`` rounds; a busy machine slows all of them alike), and each round's time is the
median of a burst of calls; the table gives the median over rounds, the weights' read rate and
each variant's time relative to the native int8-activation kernel. It also prints each
arithmetic's error against the dequantized product (float64), relative to the terms' scale.
Appends one JSON line to .bench/quant_kernels.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import llm_kernels
import torch
from llm_kernels import native, quant

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(768, 768), (2048, 768), (768, 2048), (32000, 768)]  # (N out, K in): llama-125m


def gguf_blocks(w: torch.Tensor, kind: str) -> torch.Tensor:
    """``w`` ``[N, K]`` quantized to GGUF blocks, the way llama.cpp's reference quantizers do
    (round to nearest), in torch: a bench input, not a tool."""
    n, k = w.shape
    wb = w.reshape(n, k // 32, 32)  # (N, K/32, 32)
    if kind == "q8_0":
        d = wb.abs().amax(-1, keepdim=True) / 127
        q = torch.round(wb / d.clamp_min(1e-30)).to(torch.int8)
        return torch.cat((d.half().view(torch.uint8), q.view(torch.uint8)), -1).reshape(n, -1)
    if kind == "q4_0":
        i = wb.abs().argmax(-1, keepdim=True)
        d = wb.gather(-1, i) / -8
        q = (wb / d.clamp_min(1e-30) + 8.5).floor().clamp(0, 15).to(torch.uint8)
        head = d.half().view(torch.uint8)
    else:
        lo, hi = wb.amin(-1, keepdim=True), wb.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        q = ((wb - lo) / d.clamp_min(1e-30) + 0.5).floor().clamp(0, 15).to(torch.uint8)
        head = torch.cat((d.half(), lo.half()), -1).view(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)  # (N, K/32, 16)
    return torch.cat((head, packed), -1).reshape(n, -1)


def variants(n: int, k: int) -> dict[str, tuple[str, int, object]]:
    """name -> (layout, weight bytes, fn(x))."""
    torch.manual_seed(n + k)
    w = torch.randn(n, k) * 0.02
    out: dict[str, tuple[str, int, object]] = {}
    for kind in ("q8_0", "q4_0", "q4_1"):
        blocks = gguf_blocks(w, kind)
        for mode in ("int8", "int16", "float"):
            out[f"{kind} native {mode}-act"] = (
                kind,
                blocks.numel(),
                lambda x, b=blocks, f=kind, m=mode: quant.quant_linear(x, b, f, activations=m),
            )
    scales = w.abs().amax(1) / 127
    q8 = torch.round(w / scales[:, None]).to(torch.int8)
    for mode in ("int8", "int16", "float"):
        out[f"int8 native {mode}-act"] = (
            "int8",
            q8.numel() + 4 * n,
            lambda x, m=mode: quant.quant_linear(x, q8, "int8", scales=scales, activations=m),
        )
    out["int8 torch _weight_int8pack_mm"] = (
        "int8",
        q8.numel() + 4 * n,
        lambda x: torch._weight_int8pack_mm(x, q8, scales),
    )
    blocks = gguf_blocks(w, "q4_0")
    values = quant.dequantize(blocks, "q4_0")
    d = blocks.reshape(n, k // 32, 18)[..., :2].contiguous().view(torch.float16).float()
    q = (values / d.repeat_interleave(32, 1).squeeze(-1).reshape(n, k) + 8).round().int()
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 2)
    sz = torch.stack((d.squeeze(-1).T.contiguous(), torch.zeros(k // 32, n)), -1)  # (K/32, N, 2)
    out["q4_0 torch _weight_int4pack_mm_for_cpu"] = (
        "q4_0",
        blocks.numel(),
        lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, 32, sz),
    )
    g = 64
    wg = w.reshape(n, k // g, g)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    s = (hi - lo) / 15
    qg = ((wg - lo) / s + 0.5).floor().clamp(0, 15).to(torch.uint8)
    q4 = (qg[..., : g // 2] | (qg[..., g // 2 :] << 4)).reshape(n, k // 2)
    s16, m16 = s.squeeze(-1).half(), lo.squeeze(-1).half()
    for mode in ("int8", "int16", "float"):
        out[f"q4 g64 native {mode}-act"] = (
            "q4",
            q4.numel() + 4 * s16.numel(),
            lambda x, m=mode: quant.quant_linear(
                x, q4, "q4", scales=s16, mins=m16, group_size=g, activations=m
            ),
        )
    out["f32 llm_kernels.linear"] = ("f32", 4 * w.numel(), lambda x: llm_kernels.linear(x, w))
    return out


def burst(fn, x, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def errors(n: int, k: int) -> dict[str, dict[str, float]]:
    """Each layout's error per arithmetic, against the dequantized product in float64."""
    torch.manual_seed(1)
    w = torch.randn(n, k) * 0.02
    x = torch.randn(4, k)
    result: dict[str, dict[str, float]] = {}
    for kind in ("q8_0", "q4_0", "q4_1"):
        blocks = gguf_blocks(w, kind)
        wd = quant.dequantize(blocks, kind).double()
        want = x.double() @ wd.T
        scale = (x.double().abs() @ wd.abs().T).mean().item()
        result[kind] = {
            mode: ((quant.quant_linear(x, blocks, kind, activations=mode).double() - want).abs())
            .max()
            .item()
            / scale
            for mode in ("int8", "int16", "float")
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30, help="calls per burst")
    parser.add_argument("--rows", default="1,4", help="input rows, comma-separated")
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not native.available():
        raise SystemExit(f"native kernels unavailable: {native.error}")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows = [int(r) for r in args.rows.split(",")]
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "results": [],
        "errors": errors(512, 2048),
    }
    for n, k in shapes:
        table = variants(n, k)
        for m in rows:
            x = torch.randn(m, k)
            samples: dict[str, list[float]] = {name: [] for name in table}
            for _ in range(args.rounds):
                for name, (_, _, fn) in table.items():
                    samples[name].append(burst(fn, x, args.calls))
            base = statistics.median(samples[next(iter(table))])
            print(f"\n{n}x{k}, {m} row(s), {args.threads} threads")
            for name, (layout, nbytes, _) in table.items():
                t = statistics.median(samples[name])
                gbs = nbytes / t / 1e9
                print(f"  {name:42s} {t * 1e6:8.1f} us  {gbs:6.1f} GB/s  {t / base:5.2f}x")
                record["results"].append(
                    {"shape": [n, k], "rows": m, "variant": name, "layout": layout, "us": t * 1e6}
                )
    print("\nerror against the dequantized product (max, relative to the terms' scale):")
    for kind, e in record["errors"].items():
        print(
            f"  {kind}: int8 activations {e['int8']:.2e}, int16 {e['int16']:.2e}, "
            f"float {e['float']:.2e}"
        )
    out = ROOT / ".bench" / "quant_kernels.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
