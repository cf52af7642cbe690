"""A streaming loader over memory-mapped token shards.

The windows of optimizer step ``s`` are drawn from ``numpy.random.default_rng([seed, s])``:
the loader has no state but the step, so a resumed run reads exactly the batches the
uninterrupted one would have, and every process of a distributed run draws the same global
batch and takes its own rows of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from llm_train.data import FORMAT, INDEX_NAME
from llm_train.errors import DataError

IGNORE_INDEX = -100  # targets that add nothing to the loss (cross_entropy's ignore_index)


def read_index(data_dir: str | Path) -> dict:
    """The ``index.json`` of a prepared directory; raises :class:`DataError` if missing or bad."""
    path = Path(data_dir) / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{data_dir}: no {INDEX_NAME} (run `llm-train prepare` first)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path}: not an llm-train shard index")
    return index


class TokenShards:
    """The memory-mapped shards (tokens and optional loss masks) of one split."""

    def __init__(self, data_dir: str | Path, split: str) -> None:
        """Open ``split`` of a prepared directory.

        Raises :class:`DataError` when the index or a shard is missing or has the wrong size.
        """
        self.data_dir = Path(data_dir)
        index = read_index(data_dir)
        if split not in index["splits"]:
            raise DataError(f"{data_dir}: no split {split!r} in {INDEX_NAME}")
        self.split = split
        self.vocab_size = int(index["vocab_size"])
        dtype = np.dtype(index["dtype"])
        self.tokens: list[np.ndarray] = []
        self.masks: list[np.ndarray | None] = []
        for shard in index["splits"][split]["shards"]:
            path = self.data_dir / shard["tokens"]
            if not path.is_file() or path.stat().st_size != shard["num_tokens"] * dtype.itemsize:
                raise DataError(f"{path}: missing or not {shard['num_tokens']} tokens long")
            self.tokens.append(np.memmap(path, dtype=dtype, mode="r"))
            mask = shard.get("mask")
            self.masks.append(None if mask is None else np.memmap(self.data_dir / mask, mode="r"))
        self.num_tokens = sum(len(t) for t in self.tokens)

    def window(self, shard: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``length`` tokens (int64) from ``start`` of ``shard``, and their mask (or None)."""
        ids = np.asarray(self.tokens[shard][start : start + length], dtype=np.int64)
        mask = self.masks[shard]
        return ids, None if mask is None else np.asarray(mask[start : start + length])


class BatchLoader:
    """Random windows of ``seq_len + 1`` tokens; the global batch of a step from (seed, step)."""

    def __init__(self, shards: TokenShards, seq_len: int, global_batch: int, seed: int) -> None:
        """Raises :class:`DataError` when the split is shorter than one window."""
        self.shards, self.seq_len, self.global_batch, self.seed = (
            shards,
            seq_len,
            global_batch,
            seed,
        )
        self.starts_per_shard = np.array([max(len(t) - seq_len, 0) for t in shards.tokens])
        if self.starts_per_shard.sum() == 0:
            raise DataError(
                f"{shards.data_dir}/{shards.split}: {shards.num_tokens} tokens, fewer than one "
                f"window of seq_len + 1 = {seq_len + 1}"
            )
        self.bounds = np.cumsum(self.starts_per_shard)

    def windows(self, step: int) -> list[tuple[int, int]]:
        """The ``(shard, start)`` of every row of the global batch of ``step``."""
        rng = np.random.default_rng([self.seed, step])
        picks = rng.integers(0, int(self.bounds[-1]), size=self.global_batch)
        shard = np.searchsorted(self.bounds, picks, side="right")
        first = np.concatenate(([0], self.bounds[:-1]))
        return [(int(s), int(p - first[s])) for s, p in zip(shard, picks, strict=True)]

    def batch(self, step: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``[len(rows), seq_len]`` (int64) for ``rows`` of the step's batch.

        Targets that are not learned (outside the loss mask) are :data:`IGNORE_INDEX`.
        """
        return self._tensors(self.windows(step)[rows])

    def target_count(self, step: int) -> int:
        """How many targets of the whole global batch of ``step`` count in the loss."""
        return sum(self._learned(shard, start) for shard, start in self.windows(step))

    def _learned(self, shard: int, start: int) -> int:
        mask = self.shards.masks[shard]
        if mask is None:
            return self.seq_len
        return int(np.count_nonzero(mask[start + 1 : start + 1 + self.seq_len]))

    def _tensors(self, windows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.empty((len(windows), self.seq_len), np.int64)
        y = np.empty((len(windows), self.seq_len), np.int64)
        for row, (shard, start) in enumerate(windows):
            ids, mask = self.shards.window(shard, start, self.seq_len + 1)
            x[row], y[row] = ids[:-1], ids[1:]
            if mask is not None:
                y[row][mask[1:] == 0] = IGNORE_INDEX
        return torch.from_numpy(x), torch.from_numpy(y)  # (B, T) each

    def eval_batches(
        self, n_windows: int, batch_size: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``n_windows`` evenly spaced, non-overlapping windows in batches (the same every call)."""
        windows = []
        for shard, count in enumerate(self.starts_per_shard):
            windows += [(shard, int(s)) for s in range(0, int(count), self.seq_len)]
        if len(windows) > n_windows:
            keep = np.linspace(0, len(windows) - 1, n_windows).round().astype(int)
            windows = [windows[i] for i in keep]
        return [
            self._tensors(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)
        ]

    def state_dict(self) -> dict[str, int]:
        """What determines the batches: with the step, enough to resume exactly."""
        return {"seed": self.seed, "seq_len": self.seq_len, "global_batch": self.global_batch}

    def check_state(self, state: dict[str, int]) -> None:
        """Raises :class:`DataError` when a resumed run would read different batches."""
        if state != self.state_dict():
            raise DataError(
                f"the checkpoint's loader {state} differs from this run's {self.state_dict()}; "
                "resume with the same seed, seq_len and batch_size"
            )
