"""Load test of llm-serve on loopback: many concurrent streaming clients.

    uv run --frozen python benches/serve_load.py [--clients 64] [--tokens 32] [--requests 1000]
        [--model SRC] [--max-batch 64] [--json]

The server runs as its own process (the ``llm-serve`` CLI), so its RSS is measured alone; the
clients are asyncio + httpx in this process. The model is ``--model``, else the bundled demo
model when ``llm_infer.load("demo")`` works, else a tiny random model (2 layers, 64 wide,
400-id BPE trained on a stdlib file) written to a temporary directory.

Phases: one client alone (tokens/s of a single stream); ``--clients`` at once, one request
each (time to first token p50/p99, aggregate tokens/s); then ``--requests`` requests through
``--clients`` workers, with the server's RSS after the first 100 and after all of them. Every
stream must be a 200 that ends with ``data: [DONE]`` and generates exactly ``--tokens`` tokens
(``ignore_eos``). Prints a table and appends one JSON line to
.bench/serve_load.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Stream:
    ok: bool
    ttft_s: float
    total_s: float
    tokens: int
    error: str = ""


def tiny_checkpoint(directory: Path) -> Path:
    """A random tiny model with a trained tokenizer, saved as an llm-core checkpoint."""
    import torch
    from llm_core import ModelConfig, Transformer, save_model
    from llm_tokenizer import Tokenizer

    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    tokenizer = Tokenizer.train(
        [text], 400, special_tokens=["<|endoftext|>", "<|im_end|>"], eos_token="<|im_end|>"
    )
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        max_seq_len=256,
        mlp="swiglu",
    )
    torch.manual_seed(0)
    path = directory / "tiny"
    save_model(Transformer(config), path, tokenizer_json=tokenizer.to_hf_json())
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return path


def model_source(given: str | None, tmp: Path) -> tuple[str, str]:
    """``(source for --model, description)``."""
    if given:
        return given, given
    from llm_infer import LoadError, load

    try:
        load("demo")
        return "demo", "demo"
    except LoadError:
        return str(tiny_checkpoint(tmp)), "tiny random (2 layers, n_embd 64, vocab 400, ctx 256)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def one_stream(http: httpx.AsyncClient, body: dict) -> Stream:
    started = time.perf_counter()
    ttft, tokens, done = 0.0, 0, False
    try:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Stream(False, 0, 0, 0, f"{response.status_code}: {response.text[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    return Stream(False, 0, 0, 0, str(event["error"]))
                if event["choices"] and event["choices"][0]["text"] and not ttft:
                    ttft = time.perf_counter() - started
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return Stream(False, 0, 0, 0, f"{type(exc).__name__}: {exc}")
    ok = done and tokens == body["max_tokens"]
    error = "" if ok else f"done={done} tokens={tokens}"
    return Stream(ok, ttft, time.perf_counter() - started, tokens, error)


async def run_phases(url: str, pid: int, args: argparse.Namespace, body: dict) -> dict:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        for _ in range(3):  # warm-up
            await one_stream(http, body)

        singles = [await one_stream(http, body) for _ in range(3)]
        single = min(singles, key=lambda s: s.total_s)

        started = time.perf_counter()
        burst = await asyncio.gather(*(one_stream(http, body) for _ in range(args.clients)))
        burst_s = time.perf_counter() - started

        results: list[Stream] = []
        rss_at: dict[int, float] = {}
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                results.append(await one_stream(http, body))
                if len(results) == 100 and 100 not in rss_at:
                    rss_at[100] = rss_mb(pid)

        await asyncio.gather(*(worker() for _ in range(args.clients)))
        rss_at[len(results)] = rss_mb(pid)

    everything = [*singles, *burst, *results]
    errors = [s.error for s in everything if not s.ok]
    ttfts = sorted(s.ttft_s for s in burst)
    burst_tokens = sum(s.tokens for s in burst)
    return {
        "streams": len(everything),
        "errors": len(errors),
        "first_errors": errors[:3],
        "single_tokens_per_s": single.tokens / single.total_s,
        "single_ttft_ms": single.ttft_s * 1000,
        "burst_clients": args.clients,
        "burst_s": burst_s,
        "burst_tokens_per_s": burst_tokens / burst_s,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "ttft_p99_ms": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))] * 1000,
        "rss_after_100_mb": rss_at[100],
        "rss_after_all_mb": rss_at[len(results)],
        "rss_growth": rss_at[len(results)] / rss_at[100] - 1,
        "requests": len(results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--model", help="model source (default: demo, else a tiny random model)")
    parser.add_argument("--json", action="store_true", help="print the JSON line, not a table")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source, described = model_source(args.model, Path(tmp))
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llm_serve.cli",
                "--model",
                source,
                "--model-name",
                "bench",
                "--port",
                str(port),
                "--max-batch",
                str(args.max_batch),
                "--max-queue",
                str(args.requests + args.clients),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LLM_API_KEY": ""},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.ConnectError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    print("serve_load: the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            body = {
                "model": "bench",
                "prompt": "The quick brown fox jumps over the lazy dog, again and again",
                "max_tokens": args.tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
            result = asyncio.run(run_phases(url, server.pid, args, body))
        finally:
            server.terminate()
            server.wait(timeout=30)

    record = {
        "bench": "serve_load",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "load_avg": os.getloadavg()[0],
        "model": described,
        "tokens": args.tokens,
        "max_batch": args.max_batch,
        **result,
    }
    Path(".bench").mkdir(exist_ok=True)
    with open(".bench/serve_load.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if args.json:
        print(json.dumps(record))
        return 0 if not result["errors"] else 1
    rows = [
        ("streams (all phases)", f"{result['streams']}"),
        ("errors", f"{result['errors']}"),
        ("one client: tokens/s", f"{result['single_tokens_per_s']:.0f}"),
        ("one client: time to first token", f"{result['single_ttft_ms']:.1f} ms"),
        (f"{args.clients} clients: aggregate tokens/s", f"{result['burst_tokens_per_s']:.0f}"),
        (
            f"{args.clients} clients vs one",
            f"{result['burst_tokens_per_s'] / result['single_tokens_per_s']:.1f}x",
        ),
        (f"{args.clients} clients: TTFT p50", f"{result['ttft_p50_ms']:.0f} ms"),
        (f"{args.clients} clients: TTFT p99", f"{result['ttft_p99_ms']:.0f} ms"),
        ("server RSS after 100 requests", f"{result['rss_after_100_mb']:.1f} MB"),
        (
            f"server RSS after {result['requests']} requests",
            f"{result['rss_after_all_mb']:.1f} MB ({result['rss_growth']:+.1%})",
        ),
    ]
    print(f"model: {described}; {args.tokens} tokens per stream; max_batch {args.max_batch}")
    for name, value in rows:
        print(f"  {name:<40} {value:>14}")
    for error in result["first_errors"]:
        print(f"  error: {error}")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
