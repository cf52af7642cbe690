"""Evaluation: validation perplexity, a unigram baseline, and long-context perplexity by position.

The long-context table follows StreamingLLM: a model trained at a short context reads a long
held-out stream (a) whole, with plain RoPE, (b) whole, with NTK-scaled RoPE, (c) one chunk at a
time through a sink cache (a window plus pinned first tokens), (d) the same window with no
sinks; the perplexity of each range of positions shows where each one breaks down.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from llm_core import ModelConfig, Transformer

from llm_train.loader import IGNORE_INDEX, BatchLoader, TokenShards


@torch.no_grad()
def validation_loss(
    model: Transformer, loader: BatchLoader, windows: int, batch_size: int
) -> float:
    """Mean loss (nats per learned target) over ``windows`` fixed windows of the loader's split."""
    model.eval()
    total, count = 0.0, 0
    for x, y in loader.eval_batches(windows, batch_size):
        logits = model(x.to(model.device))  # (B, T, V)
        y = y.to(model.device)
        total += float(
            F.cross_entropy(
                logits.flatten(0, 1).float(),
                y.flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        count += int((y != IGNORE_INDEX).sum())
    return total / max(count, 1)


def unigram_loss(train: TokenShards, val: TokenShards, vocab_size: int) -> float:
    """Loss (nats per learned token) on ``val`` of the token frequencies of ``train``.

    Counts are add-one smoothed; where a split has loss masks, only learned tokens count.
    """
    counts = np.ones(vocab_size, np.float64)
    for shard, mask in zip(train.tokens, train.masks, strict=True):
        ids = shard if mask is None else shard[np.asarray(mask) == 1]
        counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    logp = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for shard, mask in zip(val.tokens, val.masks, strict=True):
        ids = np.asarray(shard, np.int64)
        if mask is not None:
            ids = ids[np.asarray(mask) == 1]
        total -= float(logp[ids].sum())
        n += len(ids)
    return total / max(n, 1)


@torch.no_grad()
def token_losses(
    model: Transformer, ids: torch.Tensor, *, cache=None, chunk: int = 256
) -> torch.Tensor:
    """Per-position losses ``[T-1]`` of ``ids`` (``[T]``): whole (no cache) or streamed in chunks."""
    ids = ids.to(model.device)
    if cache is None:
        logits = model(ids[None, :-1])[0]  # (T-1, V)
    else:
        parts = [
            model(ids[None, s : min(s + chunk, len(ids) - 1)], cache)[0]
            for s in range(0, len(ids) - 1, chunk)
        ]
        logits = torch.cat(parts)  # (T-1, V)
    return F.cross_entropy(logits.float(), ids[1:], reduction="none")


def with_ntk(model: Transformer, length: int) -> Transformer:
    """A copy of ``model`` whose RoPE is NTK-scaled from its training length to ``length``."""
    config = ModelConfig.from_dict(
        {
            **model.config.to_dict(),
            "max_seq_len": length,
            "original_max_seq_len": model.config.training_seq_len,
            "rope_scaling": {"type": "ntk"},
        }
    )
    scaled = Transformer(config).to(model.device)
    scaled.load_state_dict(model.state_dict())
    return scaled.eval()


def long_context_table(
    model: Transformer,
    streams: Sequence[torch.Tensor],
    *,
    window: int = 256,
    sinks: int = 4,
    chunk: int = 64,
    bounds: Sequence[int] = (256, 512, 1024, 2048, 4096),
) -> dict[str, list[float]]:
    """Perplexity per position range (``[0, b0)``, ``[b0, b1)``, ...) of every method.

    ``streams`` are token sequences of length ``bounds[-1] + 1``. Returns ``{method: [ppl per
    range]}`` for plain RoPE, NTK, and the sink / window-only caches in both position modes.
    """
    model.eval()
    ntk = with_ntk(model, bounds[-1])
    methods = {
        "(a) plain RoPE, full attention": lambda ids: token_losses(model, ids),
        "(b) NTK-scaled RoPE, full attention": lambda ids: token_losses(ntk, ids),
    }
    for mode in ("cache", "absolute"):
        for n_sinks, label in (
            (sinks, f"(c) sink cache, window {window} + {sinks} sinks"),
            (0, f"(d) window {window}, no sinks"),
        ):
            methods[f"{label}, {mode} positions"] = lambda ids, n=n_sinks, m=mode: token_losses(
                model,
                ids,
                cache=model.new_cache(
                    1, kind="sink", window=window, sink_tokens=n, position_mode=m
                ),
                chunk=chunk,
            )
    edges = [0, *bounds]
    table = {}
    for name, fn in methods.items():
        losses = torch.stack([fn(ids) for ids in streams]).mean(0)  # (T-1,)
        table[name] = [
            math.exp(float(losses[lo:hi].mean())) for lo, hi in itertools.pairwise(edges)
        ]
    return table
