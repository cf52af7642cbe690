"""GGUF load benchmark: wall time and peak RSS of ``llm_infer.load(x.gguf)`` against the file size.

    uv run --frozen python benches/gguf_load.py [--model smollm2 | PATH.gguf] [--repeats 3] [--json]

Each load runs in a fresh Python process (so its peak RSS is the load's own), after the imports,
whose RSS is measured first and reported apart: the load's cost is ``peak - after imports``. The
float32 model's size is printed beside it, the floor for a loader that dequantizes (the file is
memory-mapped, so its pages count once read). Prints a table and appends one JSON line to
.bench/gguf_load.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import llm_infer, llm_quant, torch
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss_mb()
start = time.perf_counter()
llm = llm_infer.load(sys.argv[1])
seconds = time.perf_counter() - start
weights = sum(p.numel() * p.element_size() for p in llm.model.parameters())
print(json.dumps({"seconds": seconds, "rss_after_imports_mb": base, "peak_rss_mb": rss_mb(),
                  "float_weights_mb": weights / 2**20, "source": llm.source}))
"""


def measure(model: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2' or a .gguf path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the JSON line only")
    args = parser.parse_args()
    runs = [measure(args.model) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    file_mb = Path(best["source"]).stat().st_size / 2**20
    load_rss = max(r["peak_rss_mb"] - r["rss_after_imports_mb"] for r in runs)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "model": args.model,
        "file_mb": round(file_mb, 1),
        "load_seconds_best": round(best["seconds"], 2),
        "load_seconds_all": [round(r["seconds"], 2) for r in runs],
        "rss_after_imports_mb": round(best["rss_after_imports_mb"], 1),
        "load_peak_rss_mb": round(load_rss, 1),
        "float_weights_mb": round(best["float_weights_mb"], 1),
        "load_rss_over_file": round(load_rss / file_mb, 2),
    }
    out_dir = Path(".bench")
    out_dir.mkdir(exist_ok=True)
    with (out_dir / "gguf_load.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    if args.json:
        print(json.dumps(record))
        return
    print(f"{args.model}: {file_mb:.1f} MB file, float32 weights {record['float_weights_mb']} MB")
    print(f"load: best {record['load_seconds_best']} s of {record['load_seconds_all']}")
    print(
        f"peak RSS of the load: {record['load_peak_rss_mb']} MB above the imports' "
        f"{record['rss_after_imports_mb']} MB ({record['load_rss_over_file']}x the file)"
    )


if __name__ == "__main__":
    main()
