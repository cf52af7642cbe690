"""A decode step captured once by ``torch.compile`` and replayed for every token.

The eager step pays Python and dispatch costs for some thirty small ops per layer; a compiled
step runs them as one generated function (CPU: inductor with frozen weights and its C++
wrapper; CUDA: the same graph, which inductor may replay as a CUDA graph). To compile once,
the step sees the same shapes and no Python state every time, except the number of filled
slots, which is a dynamic dimension: the step takes the positions of the filled slots
(``[B, n]``) and attends over the first ``n`` slots of each layer's buffers, so attention
costs what the tokens held cost, not what the capacity does. Each layer's keys and values are
a separate input tensor written in place at one slot (the static cache allocates them per
layer: views of one tensor would make the compiled step rewrite the whole cache on every
token). The cache's own bookkeeping (capacity check, recording the position, the length)
stays eager, and so does the step that fills the cache's last slot (with every slot held the
keys are the whole buffer, a shape of its own).

Weights are frozen into the compiled function: call :meth:`CompiledDecoder.reset` after
changing them.
"""

from __future__ import annotations

from typing import Any

import torch

from llm_infer.protocols import CausalLM

INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True}  # CPU; see docs/benchmarks.md
MIN_CAPACITY = 256  # the smallest cache a compiled step is built for


def compiled_capacity(tokens: int, limit: int) -> int:
    """The cache capacity for ``tokens`` in a compiled decode: the next power of two (at least
    :data:`MIN_CAPACITY`, at most ``limit``, never below ``tokens``), so that a handful of
    compiled shapes serve every request."""
    capacity = MIN_CAPACITY
    while capacity < tokens:
        capacity *= 2
    return max(tokens, min(capacity, limit))


class _SlotView:
    """The ``KVCache`` protocol over a static cache's buffers for one decode step: this step's
    keys and values go to ``slot`` (a tensor, so the compiled graph does not depend on it) and
    the filled slots come back, as many as ``held`` has positions."""

    def __init__(
        self,
        k: tuple[torch.Tensor, ...],
        v: tuple[torch.Tensor, ...],
        held: torch.Tensor,
        slot: torch.Tensor,
    ) -> None:
        self.k, self.v, self.held, self.slot = k, v, held, slot

    @property
    def key_positions(self) -> torch.Tensor:
        return self.held  # (B, n)

    def append(self, positions: torch.Tensor) -> None:
        return None  # recorded by the static cache's own append, before the step

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.slot, k)  # (B, H_kv, S, D) <- (B, H_kv, 1, D)
        self.v[layer].index_copy_(2, self.slot, v)
        n = self.held.shape[1]
        return self.k[layer][:, :, :n], self.v[layer][:, :, :n]  # (B, H_kv, n, D)


class CompiledDecoder:
    """``decoder(token, position, cache) -> logits [B, V]``: one token per row into a
    ``StaticKVCache``, through a step compiled on first use (again for a new cache capacity,
    and once for a cache that holds a single token; the number held is dynamic otherwise)."""

    def __init__(self, model: CausalLM, options: dict[str, Any] | None = None) -> None:
        self.model = model
        self.options = dict(INDUCTOR_OPTIONS if options is None else options)
        self.reset()

    def reset(self) -> None:
        """Forget the compiled step (after the model's weights changed)."""
        self._slot: torch.Tensor | None = None
        # dynamic=None: static shapes, except the dimension marked dynamic in __call__
        self._step = torch.compile(self._forward, fullgraph=True, options=self.options)

    def _forward(
        self,
        token: torch.Tensor,
        position: torch.Tensor,
        slot: torch.Tensor,
        k: tuple[torch.Tensor, ...],
        v: tuple[torch.Tensor, ...],
        held: torch.Tensor,
    ) -> torch.Tensor:
        view = _SlotView(k, v, held, slot)
        return self.model.forward(token, view, position)[:, -1]  # type: ignore[arg-type]

    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache: Any) -> torch.Tensor:
        """Feed ``token`` at ``position`` (``[B, 1]`` each) into ``cache``; next-token logits."""
        if getattr(cache, "kind", None) != "static":
            raise TypeError("a compiled decode step needs a StaticKVCache")
        if cache.length + 1 >= cache.capacity:
            # The step that fills the last slot (or overflows) runs eagerly: with every slot
            # held, the keys are the whole buffer, a contiguous tensor, and the compiled graph
            # would be specialised again for that one shape. Raises CacheFullError when full.
            return self.model.forward(token, cache, position)[:, -1]
        cache.append(position)  # records the position, reserves the slot
        if self._slot is None:
            self._slot = torch.empty(1, dtype=torch.long, device=position.device)  # (1,)
        self._slot.fill_(cache.length - 1)
        held = cache.key_positions  # (B, n): positions of the filled slots
        torch._dynamo.maybe_mark_dynamic(held, 1)
        return self._step(token, position, self._slot, cache.k, cache.v, held)
