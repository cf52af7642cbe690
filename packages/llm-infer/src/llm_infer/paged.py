"""A paged KV cache: fixed-size blocks in one pool, a block table per request, shared prefixes.

Memory follows the tokens in flight: a request holds ``ceil(tokens / block_size)`` blocks, and
requests whose prompts start alike share the blocks of the common prefix (the prefix cache:
full blocks are keyed by a hash of all tokens up to their end, and kept in LRU order once no
request holds them, until their room is needed).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

import torch
from llm_core import CacheFullError

EMPTY = -1  # position of a slot that holds nothing
NULL_BLOCK = 0  # never handed out: pads block tables; its slots stay EMPTY
BEYOND_BLOCKS = "paged KV cache: a position lies beyond its row's blocks"


def block_hashes(tokens: Sequence[int], block_size: int, n_blocks: int) -> list[int]:
    """Chain hashes of the first ``n_blocks`` full blocks: each covers all tokens up to its end."""
    hashes, parent = [], 0
    for i in range(n_blocks):
        parent = hash((parent, tuple(tokens[i * block_size : (i + 1) * block_size])))
        hashes.append(parent)
    return hashes


class BlockPool:
    """Keys, values and positions of ``num_blocks`` blocks of ``block_size`` tokens, every layer.

    Keys and values are ``[layers, KV heads, slots, head_dim]``: one KV head's keys of a block
    lie side by side, as attention reads them (one run of memory per head and block, where a
    slot-major pool put ``KV heads x head_dim`` values between two keys of a head).

    Block bookkeeping (refcounts, free list, prefix cache) is plain Python; the engine calls it
    from one thread.
    """

    def __init__(
        self,
        *,
        n_layer: int,
        n_kv_head: int,
        head_dim: int,
        num_blocks: int,
        block_size: int = 16,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if num_blocks < 2 or block_size < 1:
            raise ValueError(
                f"a block pool needs >= 2 blocks of >= 1 token, got {num_blocks} x {block_size}"
            )
        self.block_size = block_size
        self.num_blocks = num_blocks
        slots = num_blocks * block_size
        self.k = torch.zeros(
            n_layer, n_kv_head, slots, head_dim, dtype=dtype, device=device
        )  # (L, H_kv, N*bs, D)
        self.v = torch.zeros_like(self.k)  # (L, H_kv, N*bs, D)
        # each layer's view, made once (the native decode step takes them every step)
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)
        self.positions = torch.full((slots,), EMPTY, dtype=torch.long, device=device)  # (N*bs,)
        self.refcount = [0] * num_blocks
        self.free: deque[int] = deque(range(1, num_blocks))
        self.hash_of: dict[int, int] = {}  # block -> prefix hash
        self.by_hash: dict[int, int] = {}  # prefix hash -> block
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, unheld blocks, LRU first

    @property
    def usable_blocks(self) -> int:
        """Blocks that can be handed out (all but the null block)."""
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        """Blocks available now: free, or held only by the prefix cache."""
        return len(self.free) + len(self.evictable)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.positions))

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self) -> int:
        """A fresh block (its slots emptied); evicts the least recently used cached prefix block
        when none is free. Raises :class:`CacheFullError` when every block is held."""
        if self.free:
            block = self.free.popleft()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            del self.by_hash[self.hash_of.pop(block)]
        else:
            raise CacheFullError(f"KV block pool full: all {self.usable_blocks} blocks are held")
        start = block * self.block_size
        self.positions[start : start + self.block_size] = EMPTY
        self.refcount[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one hold on each block; an unheld block stays cached if it has a prefix hash."""
        for block in blocks:
            self.refcount[block] -= 1
            if self.refcount[block] == 0:
                if block in self.hash_of:
                    self.evictable[block] = None
                else:
                    self.free.append(block)

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """The cached blocks of the longest prefix of ``hashes``, each now held once more."""
        blocks = []
        for h in hashes:
            block = self.by_hash.get(h)
            if block is None:
                break
            if self.refcount[block] == 0:
                del self.evictable[block]
            self.refcount[block] += 1
            blocks.append(block)
        return blocks

    def register(self, block: int, prefix_hash: int) -> None:
        """Offer a full block to the prefix cache (ignored if that prefix is cached already)."""
        if prefix_hash not in self.by_hash and block not in self.hash_of:
            self.by_hash[prefix_hash] = block
            self.hash_of[block] = prefix_hash


class PagedKVCache:
    """One forward call's view of a :class:`BlockPool` for a batch of requests (llm-core's
    ``KVCache`` protocol).

    Row ``b`` owns the blocks ``block_tables[b]``; the token at position ``p`` lives in block
    ``p // block_size`` of its row, slot ``p % block_size``. Keys come back gathered to
    ``[B, H_kv, S_max, D]``, rows padded with the null block (position -1, never attended).
    Query tokens given a negative position are padding: nothing of theirs is written.
    """

    def __init__(
        self, pool: BlockPool, block_tables: Sequence[Sequence[int]], lengths: Sequence[int]
    ) -> None:
        device = pool.positions.device
        width = max(len(t) for t in block_tables)
        table = torch.full((len(block_tables), width), NULL_BLOCK, dtype=torch.long)
        for row, blocks in enumerate(block_tables):
            table[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
        table = table.to(device)  # (B, nb)
        bs = pool.block_size
        slots = (table.unsqueeze(-1) * bs + torch.arange(bs, device=device)).flatten(1)
        self._setup(pool, [list(t) for t in block_tables], table, slots, lengths)

    @classmethod
    def same_blocks(cls, view: PagedKVCache, lengths: Sequence[int]) -> PagedKVCache:
        """A view of ``view``'s rows and blocks (its block and slot tables shared, not built
        again) at new ``lengths``: the engine's next decode step while no row gained a block."""
        new = cls.__new__(cls)
        new._setup(view.pool, view._blocks, view.table, view.slots, lengths)
        return new

    def _setup(
        self,
        pool: BlockPool,
        blocks: list[list[int]],
        table: torch.Tensor,
        slots: torch.Tensor,
        lengths: Sequence[int],
    ) -> None:
        self.pool = pool
        self._blocks = blocks  # each row's blocks, as given
        self.table = table  # (B, nb)
        self.slots = slots  # (B, nb*bs)
        self._lengths = list(lengths)
        self._write = torch.empty(0, dtype=torch.long, device=table.device)  # (N,) this call's
        self._valid = torch.empty(0, dtype=torch.bool, device=table.device)  # (B, T)
        self._all_valid = True
        self._key_positions: torch.Tensor | None = None  # (B, S), gathered when first read

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens each row holds before this call, ``[B]``."""
        return torch.tensor(self._lengths, dtype=torch.long, device=self.table.device)

    @property
    def key_positions(self) -> torch.Tensor:
        """Positions of every gathered slot ``[B, S]`` (-1 for empty and padding slots)."""
        if self._key_positions is None:
            self._key_positions = self._gather(self.pool.positions)
        return self._key_positions

    def next_positions(self, n: int) -> torch.Tensor:
        """Positions ``[B, n]`` after each row's length."""
        lengths = self.lengths  # (B,)
        return lengths.unsqueeze(1) + torch.arange(n, device=lengths.device)  # (B, n)

    def append(self, positions: torch.Tensor) -> None:
        """Record where this call's tokens (positions ``[B, T]``) go; raises ``CacheFullError``
        when a position lies beyond its row's blocks."""
        bs = self.pool.block_size
        if positions.shape[-1] == 1 and positions.shape[0] == len(self._lengths):
            # one token per row: a decode step, most often at each row's length, which the
            # block lists place without the tensor arithmetic below (0.2 ms a step, cold)
            given = positions.flatten()  # (B,)
            if given.tolist() == self._lengths:
                write = []
                for blocks, p in zip(self._blocks, self._lengths, strict=True):
                    if p // bs >= len(blocks):
                        raise CacheFullError(BEYOND_BLOCKS)
                    write.append(blocks[p // bs] * bs + p % bs)
                self._all_valid = True
                self._write = torch.tensor(write, dtype=torch.long, device=positions.device)
                self.pool.positions[self._write] = given
                self._key_positions = None  # gathered when read
                return
        self._valid = positions >= 0  # (B, T)
        safe = positions.clamp(min=0)  # (B, T)
        index = safe // bs  # (B, T)
        if bool((index[self._valid] >= self.table.shape[1]).any()):
            raise CacheFullError(BEYOND_BLOCKS)
        blocks = self.table.gather(1, index)  # (B, T)
        self._all_valid = bool(self._valid.all())  # decode: no padding, no masked copies
        if self._all_valid:
            self._write = (blocks * bs + safe % bs).flatten()  # (N,)
            self.pool.positions[self._write] = positions.flatten()
        else:
            self._write = (blocks * bs + safe % bs)[self._valid]  # (N,)
            self.pool.positions[self._write] = positions[self._valid]
        self._key_positions = None  # gathered when read

    @property
    def write_slots(self) -> torch.Tensor | None:
        """The pool rows this call's tokens go to (``[B * T]``, row by row) after
        :meth:`append`; ``None`` when some tokens are padding."""
        return self._write if self._all_valid else None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's ``k``, ``v`` (``[B, H_kv, T, D]``) for ``layer``; return every row's
        keys and values ``[B, H_kv, S, D]``."""
        k_pool, v_pool = self.pool.k[layer], self.pool.v[layer]  # (H_kv, N*bs, D)
        k_new, v_new = k.transpose(1, 2), v.transpose(1, 2)  # (B, T, H_kv, D)
        if self._all_valid:
            k_new, v_new = k_new.flatten(0, 1), v_new.flatten(0, 1)  # (N, H_kv, D)
        else:
            k_new, v_new = k_new[self._valid], v_new[self._valid]  # (N, H_kv, D)
        k_pool.index_copy_(1, self._write, k_new.transpose(0, 1))
        v_pool.index_copy_(1, self._write, v_new.transpose(0, 1))
        return self._gather_heads(k_pool), self._gather_heads(v_pool)  # (B, H_kv, S, D) each

    def _gather_heads(self, pool: torch.Tensor) -> torch.Tensor:
        """``pool[:, self.slots]`` as ``[B, H_kv, S, D]`` for a layer's ``[H_kv, slots, D]``."""
        B, S = self.slots.shape
        rows = pool.index_select(1, self.slots.flatten())  # (H_kv, B*S, D)
        return rows.view(pool.shape[0], B, S, pool.shape[2]).transpose(0, 1)

    def _gather(self, pool: torch.Tensor) -> torch.Tensor:
        """``pool[self.slots]`` (``[B, S, ...]``) through index_select, which is faster on CPU."""
        B, S = self.slots.shape
        return pool.index_select(0, self.slots.flatten()).view(B, S, *pool.shape[1:])

    def reset(self) -> None:
        """Empty this view's blocks (the pool's bookkeeping is the engine's)."""
        self.pool.positions[self.slots] = EMPTY
        self._key_positions = self._gather(self.pool.positions)
