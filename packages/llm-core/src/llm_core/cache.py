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

    ``append`` may return other positions for the queries (a sink cache in ``cache`` mode
    re-indexes positions inside the cache); ``None`` means the given ones. A cache may also set
    ``window`` and ``sink_tokens`` (the attention rule it was built for; the model's config
    otherwise) and ``rope_on_read = True`` (keys stored before RoPE, rotated by
    ``key_positions`` after every read).
    """

    @property
    def key_positions(self) -> torch.Tensor: ...

    def next_positions(self, n: int) -> torch.Tensor: ...

    def append(self, positions: torch.Tensor) -> torch.Tensor | None: ...

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reset(self) -> None: ...


class StaticKVCache:
    """Keys and values of every layer, preallocated: ``k[layer]`` and ``v[layer]`` are
    ``[B, H_kv, capacity, D]`` tensors, one allocation per layer.

    Slots fill left to right; ``positions[b, s]`` is the token position held by slot ``s`` of
    row ``b`` (``-1`` while empty). All rows advance together.

    Each layer owns its buffers (no view of one ``[n_layer, ...]`` tensor), so a compiled step
    that writes one slot of every layer mutates one small input per layer in place; views of
    a common base make ``torch.compile`` rewrite the whole base on every step.
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
        shape = (batch_size, n_kv_head, capacity, head_dim)
        self.k = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer))
        self.v = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer))
        self.positions = torch.full(
            (batch_size, capacity), EMPTY, dtype=torch.long, device=device
        )  # (B, S)
        self.length = 0  # slots in use, the same in every row
        self._start = 0  # first slot written by the current forward call

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache's tensors."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v, self.positions))

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

        Returns None: queries keep their positions. Raises :class:`CacheFullError` when the new
        tokens do not fit.
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
        self.k[layer][:, :, self._start : end] = k
        self.v[layer][:, :, self._start : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, H_kv, end, D)

    def reset(self) -> None:
        """Forget every token; the tensors are kept for reuse."""
        self.positions.fill_(EMPTY)
        self.length = 0
        self._start = 0


class SinkKVCache:
    """A ring buffer of ``sink_tokens + window`` slots: constant memory for an unbounded stream.

    Slot ``p`` holds position ``p < sink_tokens`` for good (the sinks); position ``p`` beyond
    them goes to ring slot ``sink_tokens + (p - sink_tokens) % window``, overwriting position
    ``p - window``, which no later query may see. Rows advance together and positions must come
    in order from 0, as in one stream.

    ``position_mode``:
    - ``absolute``: keys are rotated once, at their absolute position (RoPE scaling such as
      NTK covers positions past the training length).
    - ``cache``: keys are stored before RoPE and, at every step, rotated by their index inside
      the cache, as StreamingLLM does: sinks at ``0..sink_tokens-1``, then the window in order;
      the query at the index after the last key. Positions never exceed ``sink_tokens + window``.
      A chunk that would evict must be fed one token at a time (the model does this itself).
    """

    kind = "sink"

    def __init__(
        self,
        *,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        window: int,
        sink_tokens: int = 0,
        position_mode: str = "absolute",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if window <= 0 or sink_tokens < 0 or batch_size <= 0:
            raise ValueError(
                f"sink cache needs window > 0, sink_tokens >= 0, batch > 0; got {window}, {sink_tokens}, {batch_size}"
            )
        if position_mode not in ("absolute", "cache"):
            raise ValueError(f"unknown position_mode {position_mode!r} (absolute or cache)")
        self.window, self.sink_tokens, self.position_mode = window, sink_tokens, position_mode
        self.rope_on_read = position_mode == "cache"
        shape = (n_layer, batch_size, n_kv_head, sink_tokens + window, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H_kv, S, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H_kv, S, D)
        self.positions = torch.full(
            (batch_size, sink_tokens + window), EMPTY, dtype=torch.long, device=device
        )  # (B, S) absolute position held by each slot
        self._key_positions = self.positions
        self._chunk: torch.Tensor | None = None  # which tokens of a multi-token call are stored
        self._slots: torch.Tensor | None = None  # and where

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache's tensors (constant in the length of the stream)."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.positions))

    @property
    def key_positions(self) -> torch.Tensor:
        """Positions of the keys the last :meth:`update` returns, ``[B, S]`` (-1: empty)."""
        return self._key_positions

    def next_positions(self, n: int) -> torch.Tensor:
        start = self.positions.max(dim=1).values + 1  # (B,) 0 when empty
        return start.unsqueeze(1) + torch.arange(n, device=start.device)  # (B, n)

    def would_evict(self, positions: torch.Tensor) -> bool:
        """Whether storing ``positions`` (``[B, T]``) overwrites a ring slot."""
        return int(positions[0, -1]) >= self.capacity

    def slot_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Slot of each position (sinks pinned, the rest round the ring)."""
        s = self.sink_tokens
        return torch.where(positions < s, positions, s + (positions - s) % self.window)

    def append(self, positions: torch.Tensor) -> torch.Tensor | None:
        """Record ``positions`` (``[B, T]``, the same in every row) and choose their slots.

        Returns the positions the queries take: the given ones, or (``cache`` mode) their
        index inside the cache. Raises ``ValueError`` for a multi-token ``cache``-mode call
        that would evict.
        """
        T = positions.shape[1]
        p = positions[0]  # (T,) rows advance together
        if T == 1:
            self._chunk = None
            self._slots = self.slot_of(p)  # (1,)
            self.positions[:, self._slots] = positions
            visible = self.positions  # (B, S): the slot just written included
        else:
            if self.position_mode == "cache" and self.would_evict(positions):
                raise ValueError(
                    "cache position mode stores a chunk that evicts one token at a time"
                )
            # The chunk's early queries may need keys its late tokens evict: attend over the old
            # slots and the whole chunk, then store what the ring keeps of the chunk.
            keep = (p < self.sink_tokens) | (p > p[-1] - self.window)
            self._chunk = keep.nonzero().squeeze(1)  # (n,) tokens to store
            self._slots = self.slot_of(p[self._chunk])  # (n,)
            visible = torch.cat((self.positions, positions), dim=1)  # (B, S + T)
            self.positions[:, self._slots] = positions[:, self._chunk]
        if self.position_mode == "absolute":
            self._key_positions = visible
            return None
        first = torch.clamp(p[-1] - self.window + 1, min=self.sink_tokens)  # oldest window position
        self._key_positions = self._cache_index(visible, first)
        return self._cache_index(positions, first)

    def _cache_index(self, positions: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        s = self.sink_tokens
        index = torch.where(positions < s, positions, s + positions - first)
        return torch.where(positions < 0, positions, index)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's ``k``, ``v`` (``[B, H_kv, T, D]``); return what its queries may see."""
        assert self._slots is not None, "append() must come before update()"
        if self._chunk is None:  # one token: its slot held a key no query can see any more
            self.k[layer].index_copy_(2, self._slots, k)
            self.v[layer].index_copy_(2, self._slots, v)
            return self.k[layer], self.v[layer]  # (B, H_kv, S, D)
        k_all = torch.cat((self.k[layer], k), dim=2)  # (B, H_kv, S + T, D)
        v_all = torch.cat((self.v[layer], v), dim=2)
        self.k[layer].index_copy_(2, self._slots, k.index_select(2, self._chunk))
        self.v[layer].index_copy_(2, self._slots, v.index_select(2, self._chunk))
        return k_all, v_all

    def reset(self) -> None:
        """Forget the stream; the tensors are kept for reuse."""
        self.positions.fill_(EMPTY)
        self._key_positions = self.positions
        self._chunk = self._slots = None
