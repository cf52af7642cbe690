"""Run checkpoints: ``<out_dir>/checkpoints/step-NNNNNNNN/`` holds an llm-core checkpoint
(``config.json``, ``model.safetensors``, ``tokenizer.json``, written by
:func:`llm_core.save_model`) and, beside it, ``trainer_state/state.pt`` (optimizer, scheduler,
loader position, RNG states, step).

A checkpoint is written whole into ``.tmp-step-NNNNNNNN/``, fsynced, renamed into place, and
only then named in ``checkpoints/latest`` (replaced atomically). A process killed midway leaves
the previous checkpoint and ``latest`` untouched; the stale temporary directory is removed by
the next save.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from llm_core import Transformer, save_model

from llm_train.errors import TrainError

STATE_DIR = "trainer_state"
STATE_NAME = "state.pt"
LATEST = "latest"


def checkpoint_root(out_dir: str | Path) -> Path:
    """The directory holding a run's checkpoints."""
    return Path(out_dir) / "checkpoints"


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: Transformer,
    state: dict[str, Any],
    *,
    tokenizer_json: Path | None,
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically, point ``latest`` at it, keep the last ``keep``.

    Returns the checkpoint directory. Raises ``OSError`` when the disk write fails (the
    previous checkpoint stays intact).
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}"
    save_model(model, tmp, tokenizer_json=tokenizer_json)
    (tmp / STATE_DIR).mkdir()
    state_path = tmp / STATE_DIR / STATE_NAME
    torch.save(state, state_path)
    _fsync(state_path)
    _fsync(tmp / STATE_DIR)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    latest_tmp = root / f".{LATEST}.tmp"
    latest_tmp.write_text(name + "\n", encoding="utf-8")
    _fsync(latest_tmp)
    os.replace(latest_tmp, root / LATEST)
    _fsync(root)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint named by ``latest`` (or the newest complete one), or None if there is none."""
    root = checkpoint_root(out_dir)
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text(encoding="utf-8").strip()
        if (path / STATE_DIR / STATE_NAME).is_file():
            return path
    complete = [p for p in sorted(root.glob("step-*")) if (p / STATE_DIR / STATE_NAME).is_file()]
    return complete[-1] if complete else None


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The trainer state beside a checkpoint; raises :class:`TrainError` if missing or corrupt."""
    path = Path(checkpoint) / STATE_DIR / STATE_NAME
    if not path.is_file():
        raise TrainError(f"{path}: no trainer state (not a training checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as exc:
        raise TrainError(f"{path}: cannot read the trainer state: {exc}") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
