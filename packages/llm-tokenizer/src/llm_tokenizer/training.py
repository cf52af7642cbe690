"""Training byte-level BPE: count words, then merge the most frequent pair until the vocabulary is full.

Pair counts are updated incrementally: a merge touches only the words that contain its pair
(an index pair -> words), and a max-heap with lazy deletion finds the next pair. Ties go to
the smallest (left id, right id), which with GPT-2's byte order makes the merges the ones HF
tokenizers' BpeTrainer picks.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import regex

from llm_tokenizer.errors import TokenizerError
from llm_tokenizer.patterns import bytes_to_unicode, compile_splitter, resolve_pattern
from llm_tokenizer.tokenizer import Tokenizer


def count_words(
    files_or_texts: Iterable[str | os.PathLike[str]],
    pattern: str,
    normalization: str | None = None,
    special_tokens: Sequence[str] = (),
) -> Counter[str]:
    """Pre-token frequencies over files (`os.PathLike`, read as UTF-8) and texts (`str`).

    Occurrences of `special_tokens` are cut out first, as HF tokenizers' trainer does, so they
    never feed a merge. Raises OSError when a file cannot be read.
    """
    split = compile_splitter(pattern)
    special = regex.compile("|".join(map(regex.escape, special_tokens))) if special_tokens else None
    counts: Counter[str] = Counter()
    for item in files_or_texts:
        text = (
            Path(item).read_text(encoding="utf-8", errors="replace")
            if isinstance(item, os.PathLike)
            else item
        )
        for segment in special.split(text) if special is not None else (text,):
            if normalization == "NFC":
                segment = unicodedata.normalize("NFC", segment)
            counts.update(split(segment))
    return counts


def train_bpe(
    files_or_texts: Iterable[str | os.PathLike[str]],
    vocab_size: int,
    *,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = (),
    min_frequency: int = 2,
    normalization: Literal["NFC"] | None = None,
    eos_token: str | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer of `vocab_size` ids (256 bytes + merges + specials).

    Ids 0-255 are the bytes in GPT-2's order, then merged tokens in the order learned, then
    `special_tokens`. Merging stops early when no pair occurs `min_frequency` times. `eos_token`,
    if given, must be one of `special_tokens`. Raises TokenizerError when vocab_size is smaller
    than 256 + len(special_tokens) or eos_token is not a special token, and OSError when a file
    cannot be read.
    """
    regex_pattern = resolve_pattern(pattern)
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise TokenizerError(
            f"vocab_size {vocab_size} is smaller than 256 bytes + {len(special_tokens)} special tokens"
        )
    if len(set(special_tokens)) != len(special_tokens):
        raise TokenizerError("special_tokens has duplicates")
    if eos_token is not None and eos_token not in special_tokens:
        raise TokenizerError(f"eos_token {eos_token!r} is not among the special tokens")

    byte_chars = bytes_to_unicode()
    tokens = sorted(byte_chars.values())  # GPT-2's (and HF's) order: by the character's code point
    byte_ids = {b: tokens.index(c) for b, c in byte_chars.items()}
    word_counts = count_words(files_or_texts, regex_pattern, normalization, special_tokens)
    words = [[byte_ids[b] for b in word.encode()] for word in word_counts]
    counts = list(word_counts.values())
    merges = _learn_merges(words, counts, tokens, n_merges, min_frequency, show_progress)
    special = {token: len(tokens) + i for i, token in enumerate(special_tokens)}
    return Tokenizer(
        tokens,
        merges,
        kind="byte_level",
        pattern=regex_pattern,
        special_tokens=special,
        normalization=normalization,
        eos_token=eos_token,
    )


def _learn_merges(
    words: list[list[int]],
    counts: list[int],
    tokens: list[str],
    n_merges: int,
    min_frequency: int,
    show_progress: bool,
) -> list[tuple[int, int]]:
    """Run the merge loop; appends new token strings to `tokens` and returns the merges in order."""
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    pair_words: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for word_index, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_counts[pair] += count
            pair_words[pair].add(word_index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    token_ids = {token: i for i, token in enumerate(tokens)}
    vocab_target = len(tokens) + n_merges
    merges: list[tuple[int, int]] = []

    with _merge_progress(n_merges, show_progress) as report:
        while len(tokens) < vocab_target and heap:
            negative_count, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -negative_count:  # stale entry: the pair's count fell since it was pushed
                if count > 0:
                    heapq.heappush(heap, (-count, pair))
                continue
            if count < max(min_frequency, 1):
                break
            left, right = pair
            merged_token = tokens[left] + tokens[right]
            merged = token_ids.get(merged_token)
            if merged is None:  # two different pairs can spell the same token; it keeps one id
                merged = token_ids[merged_token] = len(tokens)
                tokens.append(merged_token)
            merges.append(pair)
            grown = _apply_merge(pair, merged, words, counts, pair_counts, pair_words)
            del pair_counts[pair], pair_words[pair]
            for new_pair in grown:
                if pair_counts[new_pair] > 0:
                    heapq.heappush(heap, (-pair_counts[new_pair], new_pair))
            if len(merges) % 64 == 0:
                report(len(merges), done=False)
        report(len(merges), done=True)
    return merges


def _apply_merge(
    pair: tuple[int, int],
    merged: int,
    words: list[list[int]],
    counts: list[int],
    pair_counts: defaultdict[tuple[int, int], int],
    pair_words: defaultdict[tuple[int, int], set[int]],
) -> set[tuple[int, int]]:
    """Merge `pair` in every word that holds it, left to right; return the pairs whose count grew."""
    left, right = pair
    grown: set[tuple[int, int]] = set()
    for word_index in pair_words[pair]:
        word = words[word_index]
        count = counts[word_index]
        at = 0
        while True:
            try:
                at = word.index(left, at)
            except ValueError:
                break
            if at + 1 >= len(word):
                break
            if word[at + 1] != right:
                at += 1
                continue
            if at > 0:
                before = word[at - 1]
                pair_counts[(before, left)] -= count
                new_pair = (before, merged)
                pair_counts[new_pair] += count
                pair_words[new_pair].add(word_index)
                grown.add(new_pair)
            if at + 2 < len(word):
                after = word[at + 2]
                pair_counts[(right, after)] -= count
                new_pair = (merged, after)
                pair_counts[new_pair] += count
                pair_words[new_pair].add(word_index)
                grown.add(new_pair)
            word[at : at + 2] = [merged]
            at += 1
    return grown


@contextlib.contextmanager
def _merge_progress(total: int, show: bool) -> Iterator[Callable[..., None]]:
    """Yield `report(merges_done, done=...)`; with `show`, it drives a rich progress bar."""
    if not show:
        yield lambda merges_done, done: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("merges"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("merges", total=total)

        def report(merges_done: int, done: bool) -> None:
            # When min_frequency stops training early, the bar ends full at the merges made.
            progress.update(task, completed=merges_done, total=merges_done if done else total)

        yield report
