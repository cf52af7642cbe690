"""llm-kernels' kernels against their torch baselines.

    PYTHONPATH=packages/llm-kernels/src python benches/kernels.py [--quick] [--json]
    (or: uv run --frozen python benches/kernels.py)

On a CUDA machine (H100 / H200; needs only torch and triton) it times the Triton kernels at
the sizes of issue #21's goals: sliding-window prefill (bf16, 16K tokens, window 4K, head dim
128) against FlexAttention with the same mask and SDPA with an explicit mask; decode over a
sink cache at stream lengths 4K, 64K and 1M (flat is the goal); W8A16 / W4A16 / GGUF GEMV and
GEMM (M = 1, 16; 4096 x 14336) against cuBLAS fp16 and the measured copy bandwidth; RoPE and
RMSNorm against the copy bandwidth. On CPU it times the quantized GEMV paths
(``llm_kernels.quant.quant_linear``: native int8-dot kernels or dequantize + F.linear, and
aten's ``_weight_int8pack_mm``) against float32 ``F.linear`` on the same shapes.

Prints a table and appends one JSON line to .bench/kernels.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

import torch
from llm_kernels.bench import cpu_benches, format_table, gpu_benches

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the JSON line, not a table")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    rows = gpu_benches(args.quick) if cuda else cpu_benches(args.quick)
    device = (
        torch.cuda.get_device_name(0) if cuda else f"{os.cpu_count()}-core {platform.machine()}"
    )
    result = {
        "bench": "kernels",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "load_average_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "quick": args.quick,
        "rows": [r.as_dict() for r in rows],
    }
    out_dir = ROOT / ".bench"
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / "kernels.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"kernels on {device} ({'quick' if args.quick else 'full'} sizes)")
    print(format_table(rows))


if __name__ == "__main__":
    main()
