"""Shared fixtures: a small corpus, a tokenizer trained on it, prepared shards, a run config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from llm_train.data import prepare, train_tokenizer

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "the",
    "dog",
    "ran",
    "to",
    "the",
    "park",
    "while",
    "birds",
    "sang",
    "in",
    "old",
    "trees",
    "under",
    "a",
    "bright",
    "sky",
    "near",
    "the",
    "river",
    "where",
    "children",
    "played",
    "with",
    "a",
    "red",
    "ball",
]


def write_corpus(directory: Path, *, lines: int = 300, chats: int = 40) -> list[Path]:
    """A text file of random sentences and a JSONL file of short conversations."""
    rng = random.Random(0)
    text = directory / "corpus.txt"
    text.write_text(
        "".join(" ".join(rng.choice(WORDS) for _ in range(16)) + ".\n" for _ in range(lines)),
        encoding="utf-8",
    )
    chat = directory / "chat.jsonl"
    with open(chat, "w", encoding="utf-8") as f:
        for i in range(chats):
            messages = [
                {"role": "user", "content": f"Where did the cat sit {i}?"},
                {"role": "assistant", "content": f"The cat sat on mat {i}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return [text, chat]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared directory (text + chat, vocabulary 320) shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("prepared")
    files = write_corpus(root)
    prepare(files, root / "data", train_tokenizer(files, 320), val_fraction=0.1)
    return root / "data"


def run_config(path: Path, data: Path, out_dir: Path, **fields) -> Path:
    """Write a tiny run config (1 layer of 32) to ``path``; ``fields`` override the defaults."""
    config = {
        "model": {"n_embd": 32, "n_layer": 1, "n_head": 2, "max_seq_len": 64, "mlp": "gelu"},
        "data": str(data),
        "out_dir": str(out_dir),
        "seed": 0,
        "seq_len": 32,
        "batch_size": 4,
        "micro_batch_size": 2,
        "max_steps": 20,
        "lr": 3e-3,
        "warmup_steps": 3,
        "eval_every": 10,
        "eval_windows": 8,
        "checkpoint_every": 5,
        "keep_checkpoints": 3,
        "peak_tflops": 0.1,
        **fields,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def losses(out_dir: Path) -> dict[int, float]:
    """Step -> training loss from a run's metrics.jsonl."""
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.fixture
def corpus():
    """:func:`write_corpus`, for tests that build their own data."""
    return write_corpus


@pytest.fixture
def make_config():
    """:func:`run_config`."""
    return run_config


@pytest.fixture
def read_losses():
    """:func:`losses`."""
    return losses
