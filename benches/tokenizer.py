"""Tokenizer benchmark: llm-tokenizer vs HF tokenizers vs tiktoken, side by side, one thread.

    uv run --frozen python benches/tokenizer.py [--vocab-size 8192] [--min-mb 10]

Corpus: the Python standard library's sources (tests left out), one document per file,
repeated until it reaches --min-mb. Both trainers get the same corpus, vocabulary size and
GPT-2 pattern; encoding uses one vocabulary (HF's) loaded into all three libraries, and the
ids are checked to agree. Then the same vocabulary behind llama.cpp's named pre-tokenizers
(--pre: as a GGUF `tokenizer.ggml.pre` for us, as a Sequence of isolated Splits for HF) encodes
the same corpus in both, ids checked to agree. Prints a table and appends one JSON line to
.bench/tokenizer.jsonl.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # HF tokenizers: one thread, set before it is imported
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import datetime
import json
import platform
import sysconfig
import time
from pathlib import Path

import regex
import tiktoken
from llm_tokenizer import Tokenizer
from llm_tokenizer.gguf import CONTROL, LLAMA_CPP_IGNORE_MERGES, LLAMA_CPP_PRE_TOKENIZERS, NORMAL
from llm_tokenizer.patterns import GPT2_PATTERN
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL = ["<|endoftext|>"]


def stdlib_documents(min_bytes: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test"}
    files = [p for p in sorted(root.rglob("*.py")) if not skip & set(p.relative_to(root).parts)]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    documents, size = [], 0
    while size < min_bytes:
        for text in texts:
            documents.append(text)
            size += len(text.encode())
    return documents


def timed(fn, repeats: int, before=None):
    """(result, best wall time of `repeats` calls); `before` runs untimed ahead of each call."""
    best = float("inf")
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def train_hf(documents: list[str], vocab_size: int) -> HFTokenizer:
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def to_tiktoken(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """Our byte-level vocabulary as a tiktoken Encoding: rank = id (ids follow merge order)."""
    special = set(tokenizer.special_tokens.values())
    ranks = {tokenizer.token_bytes[i]: i for i in range(tokenizer.vocab_size) if i not in special}
    return tiktoken.Encoding(
        "bench",
        pat_str=tokenizer.pattern,
        mergeable_ranks=ranks,
        special_tokens=tokenizer.special_tokens,
    )


def oniguruma(pattern: str) -> str:
    r"""A regex in HF's engine's spelling: `\Z` is `\z`, code points `\x{...}`."""
    pattern = pattern.replace(r"\Z", r"\z")
    code_point = r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})"
    return regex.sub(code_point, lambda m: "\\x{" + (m[1] or m[2]) + "}", pattern)


def named_pre_tokenizer_pair(hf: HFTokenizer, pre: str) -> tuple[Tokenizer, HFTokenizer]:
    """`hf`'s vocabulary behind llama.cpp's pre-tokenizer `pre`: ours from GGUF-style metadata,
    HF's with the same regexes as a Sequence of isolated Splits before ByteLevel."""
    data = json.loads(hf.to_str())
    steps = [
        {
            "type": "Split",
            "pattern": {"Regex": oniguruma(r)},
            "behavior": "Isolated",
            "invert": False,
        }
        for r in LLAMA_CPP_PRE_TOKENIZERS[pre]
    ]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": False,
    }
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [*steps, byte_level]}
    data["model"]["ignore_merges"] = pre in LLAMA_CPP_IGNORE_MERGES
    theirs = HFTokenizer.from_str(json.dumps(data))
    vocab = theirs.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    ours = Tokenizer.from_gguf(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [CONTROL if t in SPECIAL else NORMAL for t in tokens],
            "tokenizer.ggml.merges": [" ".join(m) for m in data["model"]["merges"]],
        }
    )
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--min-mb", type=float, default=10.0, help="corpus size in MB (UTF-8)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per figure")
    parser.add_argument(
        "--pre",
        default="smollm,llama-bpe,qwen35,deepseek-coder,deepseek-llm,falcon",
        help="llama.cpp pre-tokenizers to time on the same corpus (comma-separated; '' for none)",
    )
    args = parser.parse_args()

    documents = stdlib_documents(int(args.min_mb * 1e6))
    megabytes = sum(len(d.encode()) for d in documents) / 1e6

    # Training: same corpus, vocabulary size, pattern (GPT-2's) and min_frequency.
    n = args.repeats
    hf, hf_train_s = timed(lambda: train_hf(documents, args.vocab_size), n)
    ours_trained, ours_train_s = timed(
        lambda: Tokenizer.train(
            documents, args.vocab_size, pattern="gpt2", special_tokens=SPECIAL, min_frequency=2
        ),
        n,
    )
    hf_merges = [tuple(m) for m in json.loads(hf.to_str())["model"]["merges"]]
    our_merges = [
        (ours_trained.tokens[a], ours_trained.tokens[b])
        for (a, b), _ in sorted(ours_trained.merges.items(), key=lambda item: item[1][0])
    ]
    same_merges = sum(a == b for a, b in zip(our_merges, hf_merges, strict=False)) / len(hf_merges)

    # Encoding: one vocabulary (HF's trained one) in all three libraries.
    ours = Tokenizer.from_hf_json(hf.to_str())
    enc = to_tiktoken(ours)
    assert ours.pattern == GPT2_PATTERN
    hf_ids, hf_encode_s = timed(lambda: [e.ids for e in map(hf.encode, documents)], n)
    hf_fast_ids, hf_fast_s = timed(lambda: [e.ids for e in hf.encode_batch_fast(documents)], n)
    tiktoken_ids, tiktoken_s = timed(lambda: [enc.encode_ordinary(d) for d in documents], n)

    def clear_word_cache() -> None:
        ours.cache_size = ours.cache_size

    ours_cold_ids, ours_cold_s = timed(
        lambda: [ours.encode(d) for d in documents], n, before=clear_word_cache
    )
    ours_warm_ids, ours_warm_s = timed(lambda: [ours.encode(d) for d in documents], n)
    assert ours_cold_ids == ours_warm_ids == hf_ids == hf_fast_ids, (
        "llm-tokenizer and HF tokenizers disagree"
    )
    tiktoken_agree = sum(a == b for a, b in zip(tiktoken_ids, hf_ids, strict=True)) / len(documents)

    # Named pre-tokenizers: the same vocabulary and corpus, one row pair each.
    pre_rows = []
    for pre in filter(None, args.pre.split(",")):
        ours_pre, hf_pre = named_pre_tokenizer_pair(hf, pre)
        hf_pre_ids, hf_pre_s = timed(lambda h=hf_pre: [e.ids for e in map(h.encode, documents)], n)
        ours_pre_ids, ours_pre_s = timed(
            lambda o=ours_pre: [o.encode(d) for d in documents],
            n,
            before=lambda o=ours_pre: setattr(o, "cache_size", o.cache_size),
        )
        assert ours_pre_ids == hf_pre_ids, f"llm-tokenizer and HF tokenizers disagree under {pre}"
        pre_rows.append((pre, hf_pre_s, ours_pre_s))

    rows = [
        ("train: HF tokenizers", hf_train_s, None),
        ("train: llm-tokenizer", ours_train_s, None),
        ("encode: HF tokenizers encode()", hf_encode_s, megabytes / hf_encode_s),
        ("encode: HF tokenizers encode_batch_fast()", hf_fast_s, megabytes / hf_fast_s),
        ("encode: tiktoken encode_ordinary()", tiktoken_s, megabytes / tiktoken_s),
        ("encode: llm-tokenizer, cold word cache", ours_cold_s, megabytes / ours_cold_s),
        ("encode: llm-tokenizer, warm word cache", ours_warm_s, megabytes / ours_warm_s),
    ]
    print(
        f"corpus: {len(documents)} documents, {megabytes:.1f} MB; vocab {args.vocab_size}; one thread"
    )
    print(f"{'':44}{'seconds':>9}{'MB/s':>8}")
    for name, seconds, rate in rows:
        print(f"{name:44}{seconds:9.2f}{'' if rate is None else f'{rate:8.2f}'}")
    ratios = {
        "train_time_ours_over_hf": ours_train_s / hf_train_s,
        "encode_speed_ours_cold_over_hf_encode": hf_encode_s / ours_cold_s,
        "encode_speed_ours_cold_over_hf_batch_fast": hf_fast_s / ours_cold_s,
        "encode_speed_ours_warm_over_hf_encode": hf_encode_s / ours_warm_s,
        "encode_speed_ours_cold_over_tiktoken": tiktoken_s / ours_cold_s,
    }
    for pre, hf_pre_s, ours_pre_s in pre_rows:
        rows.append((f"encode [{pre}]: HF tokenizers encode()", hf_pre_s, megabytes / hf_pre_s))
        rows.append(
            (f"encode [{pre}]: llm-tokenizer, cold cache", ours_pre_s, megabytes / ours_pre_s)
        )
        print(f"{rows[-2][0]:44}{hf_pre_s:9.2f}{megabytes / hf_pre_s:8.2f}")
        print(f"{rows[-1][0]:44}{ours_pre_s:9.2f}{megabytes / ours_pre_s:8.2f}")
        ratios[f"encode_speed_ours_cold_over_hf_encode[{pre}]"] = hf_pre_s / ours_pre_s
    for name, value in ratios.items():
        print(f"{name:44}{value:9.2f}x")
    print(
        f"merges identical to HF's: {same_merges:.2%}; tiktoken ids agree on {tiktoken_agree:.2%} of documents"
    )

    record = {
        "bench": "tokenizer",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "corpus_mb": round(megabytes, 2),
        "vocab_size": args.vocab_size,
        "repeats": args.repeats,
        "seconds": {name: round(seconds, 3) for name, seconds, _ in rows},
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "merges_identical_to_hf": round(same_merges, 4),
        "tiktoken_documents_agree": round(tiktoken_agree, 4),
    }
    Path(".bench").mkdir(exist_ok=True)
    with open(".bench/tokenizer.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
