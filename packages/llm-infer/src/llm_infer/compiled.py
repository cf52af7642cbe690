"""A decode step captured once by ``torch.compile`` and replayed for every token.

The eager step pays Python and dispatch costs for some thirty small ops per layer; a compiled
step runs them as one generated function (CPU: inductor with frozen weights and its C++
wrapper; CUDA: the same graph, which inductor may replay as a CUDA graph). To compile once,
the step must see the same shapes and no Python state every time, so it reads the whole
static cache: keys come back for every slot, and the position mask hides the empty ones
(their position is -1), which is the attention rule the kernels apply anyway. The cache's own
bookkeeping (capacity check, recording the position, the length) stays eager. Each layer's
keys and values are a separate input tensor written in place at one slot (the static cache
allocates them per layer: views of one tensor would make the compiled step rewrite the whole
cache on every token).

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
    """The ``KVCache`` protocol over a static cache's whole buffers for one decode step: this
    step's keys and values go to ``slot`` (a tensor, so the compiled graph does not depend on
    it) and every slot comes back, masked by ``positions``."""

    def __init__(
        self,
        k: tuple[torch.Tensor, ...],
        v: tuple[torch.Tensor, ...],
        positions: torch.Tensor,
        slot: torch.Tensor,
    ) -> None:
        self.k, self.v, self.positions, self.slot = k, v, positions, slot

    @property
    def key_positions(self) -> torch.Tensor:
        return self.positions  # (B, S), -1 in empty slots

    def append(self, positions: torch.Tensor) -> None:
        return None  # recorded by the static cache's own append, before the step

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.slot, k)  # (B, H_kv, S, D) <- (B, H_kv, 1, D)
        self.v[layer].index_copy_(2, self.slot, v)
        return self.k[layer], self.v[layer]


class CompiledDecoder:
    """``decoder(token, position, cache) -> logits [B, V]``: one token per row into a
    ``StaticKVCache``, through a step compiled on first use (a recompile per new cache shape)."""

    def __init__(self, model: CausalLM, options: dict[str, Any] | None = None) -> None:
        self.model = model
        self.options = dict(INDUCTOR_OPTIONS if options is None else options)
        self.reset()

    def reset(self) -> None:
        """Forget the compiled step (after the model's weights changed)."""
        self._slot: torch.Tensor | None = None
        self._step = torch.compile(
            self._forward, fullgraph=True, dynamic=False, options=self.options
        )

    def _forward(
        self,
        token: torch.Tensor,
        position: torch.Tensor,
        slot: torch.Tensor,
        k: tuple[torch.Tensor, ...],
        v: tuple[torch.Tensor, ...],
        positions: torch.Tensor,
    ) -> torch.Tensor:
        view = _SlotView(k, v, positions, slot)
        return self.model.forward(token, view, position)[:, -1]  # type: ignore[arg-type]

    def __call__(self, token: torch.Tensor, position: torch.Tensor, cache: Any) -> torch.Tensor:
        """Feed ``token`` at ``position`` (``[B, 1]`` each) into ``cache``; next-token logits."""
        if getattr(cache, "kind", None) != "static":
            raise TypeError("a compiled decode step needs a StaticKVCache")
        cache.append(position)  # raises CacheFullError when full; records the position
        if self._slot is None:
            self._slot = torch.empty(1, dtype=torch.long, device=position.device)  # (1,)
        self._slot.fill_(cache.length - 1)
        return self._step(token, position, self._slot, cache.k, cache.v, cache.positions)
