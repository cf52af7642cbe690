"""Shared corpora and reference tokenizers: HF tokenizers trained on Python's own sources."""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zlib
from pathlib import Path

import pytest
from llm_tokenizer.patterns import LLAMA3_PATTERN
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def stdlib_sources() -> list[Path]:
    """The standard library's .py files (tests and site-packages left out), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test"}
    return [p for p in sorted(root.rglob("*.py")) if not skip & set(p.relative_to(root).parts)]


def mixed_text(rng: random.Random, n_chars: int) -> str:
    """Text that stresses tokenizers: CJK, emoji (ZWJ, flags, skin tones), scripts, odd whitespace."""
    pieces = []
    cjk = lambda k: "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(k))  # noqa: E731
    generators = [
        lambda: cjk(rng.randint(1, 12)) + rng.choice(["。", "，", "、", " "]),
        lambda: "".join(chr(rng.randint(0x1F600, 0x1F64F)) for _ in range(rng.randint(1, 4))),
        lambda: rng.choice(["👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "👍🏽", "❤️", "🏳️‍🌈", "1️⃣"]),
        lambda: rng.choice(
            [
                "Привет мир",
                "مرحبا بالعالم",
                "नमस्ते दुनिया",
                "γειά σου",
                "café naïve",
                "Ünïcödé",
                "ǅemal",
            ]
        ),
        lambda: (
            rng.choice([" ", "  ", "\t", "\n", "\r\n", "    \n", "\u3000", "\xa0", " \t \n\n   "])
            * rng.randint(1, 9)
        ),
        lambda: rng.choice(SPECIAL),
        lambda: rng.choice(
            ["I'm", "you'll", "WE'VE", "it's", "x=1_000_000", "3.14159", "0xFF", "१२३", "½"]
        ),
        lambda: "".join(chr(rng.randint(0x20, 0x2FF)) for _ in range(rng.randint(1, 8))),
    ]
    size = 0
    while size < n_chars:
        piece = rng.choice(generators)()
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


@pytest.fixture(scope="session")
def corpus() -> dict[str, str]:
    """`train`: ~1.5 MB of stdlib sources; `held_out`: >1 MB of other sources mixed with stress text."""
    files = stdlib_sources()
    rng = random.Random(0)
    train, held_out = [], []
    train_size = held_out_size = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if (
            train_size < 1_500_000
            and zlib.crc32(path.name.encode()) % 3
            and path.stat().st_size < 100_000
        ):
            train.append(text)
            train_size += len(text)
        elif held_out_size < 900_000 and "encodings" not in path.parts:
            held_out.append(text[:20_000])
            held_out.append(mixed_text(rng, 2_000))
            held_out_size += min(len(text), 20_000) + 2_000
    encodings = [p for p in files if "encodings" in p.parts][
        :40
    ]  # code pages: many non-ASCII characters
    held_out += [p.read_text(encoding="utf-8")[:5_000] for p in encodings]
    return {"train": "".join(train), "held_out": "".join(held_out)}


def train_hf_byte_level(text: str, vocab_size: int, pattern: str | None = None) -> HFTokenizer:
    """HF's ByteLevel BPE (GPT-2 regex, or a Split with `pattern` as Llama 3 does), all 256 bytes."""
    tokenizer = HFTokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pattern is None)
    if pattern is None:
        tokenizer.pre_tokenizer = byte_level
    else:
        split = pre_tokenizers.Split(pattern=Regex(pattern), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def train_hf_metaspace(text: str, vocab_size: int) -> HFTokenizer:
    """HF's BPE with a Metaspace pre-tokenizer and byte fallback (<0x00>..<0xFF>), decoded as Llama 2 is."""
    tokenizer = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *BYTE_TOKENS],
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer)
    # The byte tokens were passed as special tokens only to reserve their ids: make them ordinary.
    data = json.loads(tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in BYTE_TOKENS]
    data["decoder"] = llama_decoder()
    return HFTokenizer.from_str(json.dumps(data))


def llama_decoder() -> dict:
    """Llama 2's decoder chain: ▁ -> space, byte tokens -> bytes, fuse, strip one leading space."""
    return json.loads(
        decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        ).__getstate__()
    )


@pytest.fixture(scope="session")
def hf_byte_level(corpus) -> HFTokenizer:
    return train_hf_byte_level(corpus["train"], 4096)


@pytest.fixture(scope="session")
def hf_metaspace(corpus) -> HFTokenizer:
    return train_hf_metaspace(corpus["train"], 2048)


@pytest.fixture(scope="session")
def hf_split_pattern(corpus) -> HFTokenizer:
    """A Llama 3-style tokenizer.json: Split(regex) then ByteLevel without its own regex."""
    return train_hf_byte_level(corpus["train"][:500_000], 1024, pattern=LLAMA3_PATTERN)


@pytest.fixture(scope="session")
def special_tokens() -> list[str]:
    return SPECIAL


@pytest.fixture(scope="session")
def llama_normalizer() -> dict:
    """Llama 2's legacy normalizer: prepend "▁", then spaces -> "▁"."""
    return json.loads(
        normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        ).__getstate__()
    )


@pytest.fixture(scope="session", name="llama_decoder")
def llama_decoder_fixture() -> dict:
    return llama_decoder()


# -- llama.cpp's own tokenizer test vocabularies (models/ggml-vocab-*.gguf + .inp/.out) -------

WORKSPACE = Path(__file__).resolve().parents[3]


def _models_dir(root: Path) -> Path | None:
    """`root` is a llama.cpp checkout, a llama-cpp-python sdist, or a folder above one."""
    for candidate in (root / "models", root / "vendor/llama.cpp/models"):
        if any(candidate.glob("ggml-vocab-*.gguf")):
            return candidate
    found = sorted(root.glob("*/vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf"))
    return found[0].parent if found else None


def locate_llama_cpp_models() -> tuple[Path | None, list[str]]:
    """llama.cpp's `models/` folder: from $LLAMA_CPP_SRC, else the llama-cpp-python sdist in
    uv's cache, else one downloaded with pip into .bench/ and unpacked. Returns the folder (or
    None) and what was tried, for the skip reason."""
    tried = []
    env = os.environ.get("LLAMA_CPP_SRC")
    if env:
        found = _models_dir(Path(env))
        if found:
            return found, tried
        tried.append(f"LLAMA_CPP_SRC={env} holds no ggml-vocab-*.gguf")
    else:
        tried.append("LLAMA_CPP_SRC is unset")
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = None
    uv = shutil.which("uv")
    if uv:
        cache = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True).stdout.strip()
        pattern = f"{cache}/sdists-v*/pypi/llama-cpp-python/{version or '*'}/*/src"
        for src in sorted(glob.glob(pattern)):
            found = _models_dir(Path(src))
            if found:
                return found, tried
        tried.append(f"no llama-cpp-python sdist in uv's cache ({pattern})")
    else:
        tried.append("uv is not on PATH")
    if version is None:
        tried.append("llama-cpp-python is not installed (its version names the sdist)")
        return None, tried
    bench = WORKSPACE / ".bench" / f"llama-cpp-python-{version}"
    found = _models_dir(bench)
    if found:
        return found, tried
    bench.mkdir(parents=True, exist_ok=True)
    spec = f"llama-cpp-python=={version}"
    for pip in ([sys.executable, "-m", "pip"], [shutil.which("uvx") or "uvx", "pip"]):
        try:
            done = subprocess.run(
                [*pip, "download", "--no-deps", "--no-binary", ":all:", spec, "-d", str(bench)],
                capture_output=True,
                text=True,
            )
        except OSError:
            done = None
        archives = sorted(bench.glob("llama_cpp_python-*.tar.gz"))
        if done is not None and done.returncode == 0 and archives:
            with tarfile.open(archives[0]) as archive:
                archive.extractall(bench, filter="data")
            found = _models_dir(bench)
            if found:
                return found, tried
        tried.append(f"{' '.join(pip[:3])} download {spec} failed")
    return None, tried


@pytest.fixture(scope="session")
def llama_cpp_models() -> Path:
    """llama.cpp's models/ folder, or a skip that says every place that was tried."""
    found, tried = locate_llama_cpp_models()
    if found is None:
        pytest.skip("llama.cpp's models/ folder not found: " + "; ".join(tried))
    return found
