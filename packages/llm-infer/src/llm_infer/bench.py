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


async def _engine_run(llm: LLM, prompts: list[list[int]], new_tokens: int) -> tuple[float, Any]:
    async with Engine(llm, max_batch=len(prompts)) as engine:
        start = time.perf_counter()
        await asyncio.gather(*(engine.generate(p, **greedy(new_tokens)) for p in prompts))
        return time.perf_counter() - start, engine.stats()


def measure_engine(
    llm: LLM, prompt_len: int, new_tokens: int, concurrency: int, seed: int = 0
) -> dict[str, Any]:
    """``concurrency`` requests at once through the :class:`Engine`: aggregate tokens/s (all
    generated tokens over the wall time) and the mean time to first token."""
    prompts = [random_prompt(llm.vocab_size, prompt_len, seed + i) for i in range(concurrency)]
    wall, stats = asyncio.run(_engine_run(llm, prompts, new_tokens))
    return {
        "concurrency": concurrency,
        "aggregate_tokens_per_s": concurrency * new_tokens / wall,
        "per_stream_tokens_per_s": new_tokens / wall,
        "mean_time_to_first_token_s": stats.mean_time_to_first_token_s,
        "wall_s": wall,
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
