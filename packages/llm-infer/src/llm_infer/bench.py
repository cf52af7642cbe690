"""Throughput measurements shared by ``llm-infer bench`` and ``benches/decode.py``."""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import torch

from llm_infer.engine import Engine
from llm_infer.llm import LLM


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    """``length`` token ids drawn uniformly with a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=gen).tolist()


def greedy(new_tokens: int) -> dict[str, Any]:
    """Sampling keywords for exactly ``new_tokens`` greedy tokens."""
    return dict(temperature=0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)


def measure_single(llm: LLM, prompt_len: int, new_tokens: int, seed: int = 0) -> dict[str, Any]:
    """One request through ``LLM``'s static-cache path: prefill and decode tokens/s, time to
    first token (s), and the tokens (to compare with peers)."""
    prompt = random_prompt(llm.vocab_size, prompt_len, seed)
    generation = llm.request(prompt, **greedy(new_tokens))
    start = time.perf_counter()
    steps = llm.run(generation)
    next(steps)
    first = time.perf_counter()
    for _ in steps:
        pass
    end = time.perf_counter()
    return {
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "time_to_first_token_s": first - start,
        "prefill_tokens_per_s": prompt_len / (first - start),
        "decode_tokens_per_s": (new_tokens - 1) / (end - first),
        "tokens_per_s": new_tokens / (end - start),
        "token_ids": generation.token_ids,
    }


class ServedEngine:
    """A started :class:`Engine` on an event loop of its own, as ``llm-serve`` holds one: its
    worker thread, KV block pool and caches live across the requests measured through it, so
    that a measurement can be of requests through a running engine rather than of starting
    one (a new worker thread, whose first steps build its OpenMP team). Each request gets a
    prompt of its own (no prefix-cache hits).

    Close it when its measurements are done: while it lives, its idle worker keeps an OpenMP
    team, beside which other work in the process ran slower on a 2-core VM (llama.cpp 0.6x,
    ``LLM.generate`` about 0.9x; docs/benchmarks.md).

    Use as a context manager; :meth:`measure` runs ``concurrency`` requests at once."""

    def __init__(self, llm: LLM, max_batch: int = 8, seed: int = 1_000_000) -> None:
        self.llm = llm
        self.loop = asyncio.new_event_loop()
        self._firsts: list[float] = []  # each finished request's time to first token
        self.engine = Engine(
            llm,
            max_batch=max_batch,
            observer=lambda t: self._firsts.append(t.time_to_first_token_s or 0.0),
        )
        self.loop.run_until_complete(self.engine.start())
        self.seed = seed  # of the next request's prompt

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.engine.close())
        finally:
            self.loop.close()

    def __enter__(self) -> ServedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def measure(self, prompt_len: int, new_tokens: int, concurrency: int) -> dict[str, Any]:
        """``concurrency`` requests at once: aggregate tokens/s (all generated tokens over the
        wall time), the mean time to first token and the wall time."""
        vocab = self.llm.vocab_size
        prompts = [random_prompt(vocab, prompt_len, self.seed + i) for i in range(concurrency)]
        self.seed += concurrency
        self._firsts.clear()

        async def run() -> float:
            start = time.perf_counter()
            await asyncio.gather(*(self.engine.generate(p, **greedy(new_tokens)) for p in prompts))
            return time.perf_counter() - start

        wall = self.loop.run_until_complete(run())  # the observer has seen every request
        return {
            "concurrency": concurrency,
            "aggregate_tokens_per_s": concurrency * new_tokens / wall,
            "per_stream_tokens_per_s": new_tokens / wall,
            "mean_time_to_first_token_s": sum(self._firsts) / len(self._firsts),
            "wall_s": wall,
        }


def measure_engine(
    llm: LLM, prompt_len: int, new_tokens: int, concurrency: int, seed: int = 0
) -> dict[str, Any]:
    """``concurrency`` requests at once through a new :class:`Engine` (started for them, closed
    after; see :class:`ServedEngine` to measure a running one): aggregate tokens/s, the mean
    time to first token and the wall time."""
    with ServedEngine(llm, max_batch=concurrency, seed=seed) as served:
        return served.measure(prompt_len, new_tokens, concurrency)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
