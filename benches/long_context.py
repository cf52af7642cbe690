"""Stream a million tokens through a small model with the sink cache, in bounded memory.

Chunked prefill and single-token decode at 10K, 100K and 1M tokens: tokens/s and RSS at each
mark, for the sink cache and (for contrast) the static cache, which grows until its memory
budget or its time budget runs out. Then the two position modes of the sink cache side by side.

    uv run --frozen python benches/long_context.py            # the full run (a few minutes)
    uv run --frozen python benches/long_context.py --tokens 20000 --marks 2000,20000   # a quick one

Prints tables and appends one JSON line per measurement to .bench/long_context.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from llm_core import CacheFullError, ModelConfig, Transformer
from rich.console import Console
from rich.table import Table


def bench_config(window: int, sinks: int, position_mode: str = "absolute") -> ModelConfig:
    """A small Llama-style model, trained length = the window, NTK scaled to a million positions."""
    return ModelConfig(
        vocab_size=512,
        n_embd=128,
        n_layer=4,
        n_head=4,
        n_kv_head=4,
        mlp="swiglu",
        intermediate_size=384,
        max_seq_len=1 << 20,
        original_max_seq_len=window,
        rope_scaling={"type": "ntk"},
        window_size=window,
        sink_tokens=sinks,
        position_mode=position_mode,
        tie_embeddings=False,
    )


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Mark:
    cache: str
    tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    rss_mib: float
    peak_rss_mib: float
    cache_mib: float


def stream(
    model: Transformer,
    cache,
    *,
    total: int,
    marks: list[int],
    chunk: int,
    decode_steps: int,
    seconds: float,
    label: str,
    console: Console,
) -> tuple[list[Mark], str]:
    """Prefill random tokens chunk by chunk; at each mark, report the rates and decode.

    Rates use the median time per chunk (prefill, over the chunks in the last 10% before the
    mark) and per step (decode), so a burst of load from elsewhere does not move them.
    """
    gen = torch.Generator().manual_seed(0)
    marks_left = [m for m in marks if m <= total]
    done, results, chunk_times = 0, [], []
    start = time.perf_counter()
    stopped = f"reached {total:,} tokens"
    full = f"stopped at {{:,}} tokens: the {label} cache is full"
    with torch.inference_mode():
        while done < total and marks_left:
            n = min(chunk, marks_left[0] - done)
            tokens = torch.randint(0, model.config.vocab_size, (1, n), generator=gen)
            t0 = time.perf_counter()
            try:
                model.prefill(tokens, cache, chunk_size=n)
            except CacheFullError:
                stopped = full.format(done)
                break
            if done >= 0.9 * marks_left[0] - chunk:
                chunk_times.append((time.perf_counter() - t0) / n)  # seconds per token
            done += n
            if done == marks_left[0]:
                token = torch.randint(0, model.config.vocab_size, (1, 1), generator=gen)
                step_times = []
                try:
                    for _ in range(decode_steps):
                        t0 = time.perf_counter()
                        token = model(token, cache)[:, -1:].argmax(-1)
                        step_times.append(time.perf_counter() - t0)
                except CacheFullError:
                    stopped = full.format(done)
                    break
                done += decode_steps
                results.append(
                    Mark(
                        cache=label,
                        tokens=marks_left.pop(0),
                        prefill_tok_s=1 / statistics.median(chunk_times),
                        decode_tok_s=1 / statistics.median(step_times),
                        rss_mib=rss_bytes() / 2**20,
                        peak_rss_mib=peak_rss_bytes() / 2**20,
                        cache_mib=cache.nbytes / 2**20,
                    )
                )
                chunk_times = []
                m = results[-1]
                console.print(
                    f"  {label}: {m.tokens:>9,} tokens, {m.prefill_tok_s:8.0f} tok/s prefill, "
                    f"{m.decode_tok_s:6.0f} tok/s decode, RSS {m.rss_mib:,.0f} MiB"
                )
            if time.perf_counter() - start > seconds:
                stopped = f"stopped at {done:,} tokens: over its time budget of {seconds:.0f} s"
                break
    return results, stopped


def position_modes(window: int, sinks: int, steps: int) -> list[dict]:
    """Decode tokens/s of the sink cache in both position modes, after 2x the cache is streamed."""
    rows = []
    for mode in ("absolute", "cache"):
        torch.manual_seed(0)
        model = Transformer(bench_config(window, sinks, mode)).eval()
        cache = model.new_cache(1, kind="sink")
        with torch.inference_mode():
            model.prefill(
                torch.randint(0, 512, (1, cache.capacity)), cache
            )  # fills it, no eviction
            token = torch.zeros(1, 1, dtype=torch.long)
            for _ in range(cache.capacity):  # evict one full cache's worth
                token = model(token, cache)[:, -1:].argmax(-1)
            step_times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                token = model(token, cache)[:, -1:].argmax(-1)
                step_times.append(time.perf_counter() - t0)
            rows.append({"position_mode": mode, "decode_tok_s": 1 / statistics.median(step_times)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument(
        "--marks", default="10000,100000,1000000", help="comma-separated token counts"
    )
    parser.add_argument("--chunk", type=int, default=512, help="prefill chunk (default 512)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--decode-steps", type=int, default=128)
    parser.add_argument(
        "--static-budget-mib", type=int, default=1024, help="static cache memory (default 1 GiB)"
    )
    parser.add_argument(
        "--static-seconds", type=float, default=180.0, help="static run time budget"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steadiest on a shared machine)",
    )
    parser.add_argument("--out", type=Path, default=Path(".bench/long_context.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    marks = [int(m) for m in args.marks.split(",")]
    config = bench_config(args.window, args.sinks)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    per_token = 2 * config.n_layer * config.kv_heads * config.head_dim * 4 + 8
    console.print(
        f"model: {model.num_parameters():,} parameters, window {args.window} + {args.sinks} sinks, "
        f"chunk {args.chunk}, {args.threads} threads"
    )

    sink_marks, sink_end = stream(
        model, model.new_cache(1, kind="sink"), total=args.tokens, marks=marks, chunk=args.chunk,
        decode_steps=args.decode_steps, seconds=float("inf"), label="sink", console=console,
    )  # fmt: skip
    static_capacity = args.static_budget_mib * 2**20 // per_token
    static_marks, static_end = stream(
        model, model.new_cache(1, static_capacity), total=args.tokens, marks=marks, chunk=args.chunk,
        decode_steps=args.decode_steps, seconds=args.static_seconds, label="static", console=console,
    )  # fmt: skip
    modes = position_modes(args.window, args.sinks, steps=256)

    table = Table(title="Streaming through a KV cache (batch 1, fp32)")
    for col in (
        "cache",
        "tokens",
        "prefill tok/s",
        "decode tok/s",
        "RSS MiB",
        "peak RSS MiB",
        "cache MiB",
    ):
        table.add_column(col, justify="right")
    for m in sink_marks + static_marks:
        table.add_row(
            m.cache, f"{m.tokens:,}", f"{m.prefill_tok_s:,.0f}", f"{m.decode_tok_s:,.0f}",
            f"{m.rss_mib:,.0f}", f"{m.peak_rss_mib:,.0f}", f"{m.cache_mib:,.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"sink: {sink_end}; static ({static_capacity:,} slots): {static_end}")
    if len(sink_marks) >= 2:
        first, last = sink_marks[0], sink_marks[-1]
        console.print(
            f"sink cache, {first.tokens:,} -> {last.tokens:,} tokens: RSS {100 * (last.rss_mib / first.rss_mib - 1):+.1f}%, "
            f"prefill tok/s x{last.prefill_tok_s / first.prefill_tok_s:.2f}, "
            f"decode tok/s x{last.decode_tok_s / first.decode_tok_s:.2f}"
        )
    for row in modes:
        console.print(
            f"position mode {row['position_mode']:>8}: {row['decode_tok_s']:,.0f} decode tok/s"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "threads": args.threads,
    }
    with args.out.open("a") as f:
        for m in sink_marks + static_marks:
            f.write(json.dumps({"bench": "long_context", **stamp, **asdict(m)}) + "\n")
        for row in modes:
            f.write(json.dumps({"bench": "long_context_modes", **stamp, **row}) + "\n")


if __name__ == "__main__":
    main()
