"""KV caches: preallocated tensors written in place, with the position of every slot.

A cache is passed to ``Transformer.forward`` explicitly. Per forward call the model first
calls :meth:`StaticKVCache.append` with the new tokens' positions (once), then every layer
calls :meth:`StaticKVCache.update` with its keys and values and attends over what comes back,
masked by :attr:`StaticKVCache.key_positions`. Kernels mask by positions, never by slot order.
"""

from __future__ import annotations

from typing import Protocol

import torch

from llm_core.errors import CacheFullError

EMPTY = -1  # position of a slot that holds nothing yet


class KVCache(Protocol):
    """What ``Transformer.forward`` needs from a cache; static, sink and paged caches provide it.

    Per forward call: ``append(positions)`` once (``[B, T]``), then ``update(layer, k, v)`` per
    layer, which stores this call's keys/values (``[B, H_kv, T, D]``) and returns every key and
    value the layer's queries may see (``[B, H_kv, S, D]``), aligned with ``key_positions``
    (``[B, S]``, negative for slots that hold nothing).
    """

    @property
    def key_positions(self) -> torch.Tensor: ...

    def next_positions(self, n: int) -> torch.Tensor: ...

    def append(self, positions: torch.Tensor) -> None: ...

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reset(self) -> None: ...


class StaticKVCache:
    """Keys and values of every layer in ``[n_layer, B, H_kv, capacity, D]`` tensors.

    Slots fill left to right; ``positions[b, s]`` is the token position held by slot ``s`` of
    row ``b`` (``-1`` while empty). All rows advance together.
    """

    kind = "static"

    def __init__(
        self,
        *,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size <= 0 or capacity <= 0:
            raise ValueError(
                f"cache batch_size and capacity must be positive, got {batch_size}, {capacity}"
            )
        shape = (n_layer, batch_size, n_kv_head, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H_kv, S, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H_kv, S, D)
        self.positions = torch.full(
            (batch_size, capacity), EMPTY, dtype=torch.long, device=device
        )  # (B, S)
        self.length = 0  # slots in use, the same in every row
        self._start = 0  # first slot written by the current forward call

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache's tensors."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.positions))

    @property
    def key_positions(self) -> torch.Tensor:
        """Positions of the filled slots, ``[B, length]``."""
        return self.positions[:, : self.length]

    def next_positions(self, n: int) -> torch.Tensor:
        """Positions ``[B, n]`` continuing after the last one each row holds (0 when empty)."""
        start = (
            self.positions[:, self.length - 1] + 1
            if self.length
            else torch.zeros(self.batch_size, dtype=torch.long, device=self.positions.device)
        )  # (B,)
        return start.unsqueeze(1) + torch.arange(n, device=start.device)  # (B, n)

    def append(self, positions: torch.Tensor) -> None:
        """Reserve slots for ``positions`` (``[B, T]``) and record them; call once per forward.

        Raises :class:`CacheFullError` when the new tokens do not fit.
        """
        n = positions.shape[-1]
        if self.length + n > self.capacity:
            raise CacheFullError(
                f"KV cache full: capacity {self.capacity} tokens, {self.length} held, {n} more asked for"
            )
        self._start = self.length
        self.positions[:, self.length : self.length + n] = positions
        self.length += n

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's ``k``, ``v`` (``[B, H_kv, T, D]``) for ``layer``; return all filled slots."""
        end = self._start + k.shape[2]
        self.k[layer, :, :, self._start : end] = k
        self.v[layer, :, :, self._start : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, H_kv, end, D)

    def reset(self) -> None:
        """Forget every token; the tensors are kept for reuse."""
        self.positions.fill_(EMPTY)
        self.length = 0
        self._start = 0
