"""The engine's model runner: one :class:`~llm_infer.engine.scheduler.Plan` through the model
on the paged cache, with the generation core's :func:`~llm_infer.generate.prefill` and its
:class:`~llm_infer.generate.DecodeStep` (the LLM's own: the native step where it serves the
model). Tensors only: no bookkeeping."""

from __future__ import annotations

import torch

from llm_infer.engine.scheduler import Plan, Request
from llm_infer.generate import DecodeStep, Generation, prefill
from llm_infer.paged import BlockPool, PagedKVCache
from llm_infer.protocols import CausalLM


class ModelRunner:
    """Runs a plan's prompt chunks (one batched forward) and its decode rows (one batched
    step), and samples each request that reached a new token."""

    def __init__(self, model: CausalLM, pool: BlockPool, step: DecodeStep | None = None) -> None:
        self.model = model
        self.pool = pool
        self.step = step if step is not None else DecodeStep(model)
        self.device = model.device  # looked up once, not per step
        # the last decode step's block tables and view: the next step reuses the view's tables
        # while the rows hold the same blocks (15 steps in 16 of one stream)
        self._view: tuple[list[list[int]], PagedKVCache] | None = None

    @torch.inference_mode()
    def execute(self, plan: Plan) -> list[tuple[Request, str | Exception]]:
        """The text each sampled token completes, or the error its sampling raised (which
        fails that request alone), per request that sampled."""
        model, device = self.model, self.device
        sampled: list[tuple[Request, str | Exception]] = []
        if plan.prefills:
            # every prompt chunk of the plan in one forward: rows left-padded to the longest
            # (padding has position -1: nothing of it is written or seen), so that each row's
            # last column is its last token; eight 32-token chunks take about half the time of
            # eight forwards
            rows = plan.prefills
            width = max(end - start for _, start, end in rows)
            tokens = torch.zeros(len(rows), width, dtype=torch.long)  # (P, t)
            positions = torch.full((len(rows), width), -1, dtype=torch.long)  # (P, t)
            for i, (request, start, end) in enumerate(rows):
                tokens[i, width - (end - start) :] = torch.tensor(request.prompt[start:end])
                positions[i, width - (end - start) :] = torch.arange(start, end)
            cache = PagedKVCache(
                self.pool, [r.blocks for r, _, _ in rows], [start for _, start, _ in rows]
            )
            logits = prefill(
                model, tokens.to(device), cache, positions.to(device), chunk=width
            )  # (P, V)
            for i, (request, _, end) in enumerate(rows):
                if end == len(request.prompt):
                    sampled.append((request, _sample(request.generation, logits[i])))
        if plan.decodes:
            rows = plan.decodes
            cache = self._decode_view(rows)
            # one tensor for both columns: each torch.tensor call costs about 10 us
            both = torch.tensor(
                [[r.tokens[r.computed], r.computed] for r in rows], device=device
            )  # (B, 2)
            logits = self.step(both[:, :1], both[:, 1:], cache)  # (B, V)
            for row, request in enumerate(rows):
                sampled.append((request, _sample(request.generation, logits[row])))
        return sampled

    def _decode_view(self, rows: list[Request]) -> PagedKVCache:
        """The paged view of ``rows`` for a decode step."""
        tables = [list(r.blocks) for r in rows]  # copies: a request's list grows in place
        lengths = [r.computed for r in rows]
        if self._view is not None and self._view[0] == tables:
            return PagedKVCache.same_blocks(self._view[1], lengths)
        cache = PagedKVCache(self.pool, tables, lengths)
        self._view = (tables, cache)
        return cache


def _sample(generation: Generation, logits: torch.Tensor) -> str | Exception:
    """The text of the next token, or the error that sampling it raised."""
    try:
        return generation.step(logits)
    except Exception as exc:
        return exc
