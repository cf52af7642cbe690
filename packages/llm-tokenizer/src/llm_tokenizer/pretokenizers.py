"""Pre-tokenizers: text -> pieces that BPE merges separately, as HF `Split` steps compose them.

A pre-tokenizer is one regex (the common case: GPT-2, Llama 3, Qwen2) or a sequence of `Split`
steps applied in turn, each to every piece the previous steps made. That shape covers HF
tokenizer.json's `Split` (with its `isolated` / `removed` / `merged_with_previous` /
`merged_with_next` / `contiguous` behaviours and `invert`), `Digits`, `Punctuation`, `Sequence`
and `ByteLevel(use_regex=True)`, and llama.cpp's named pre-tokenizers, whose regex lists split
exactly as a sequence of isolated Splits does: matches and the text between them both become
pieces.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import regex

from llm_tokenizer.errors import TokenizerError
from llm_tokenizer.patterns import DEEPSEEK_LLM_LETTERS, GPT2_PATTERN, PATTERNS

Behavior = Literal["isolated", "removed", "merged_with_previous", "merged_with_next", "contiguous"]
BEHAVIORS: tuple[str, ...] = (
    "isolated",
    "removed",
    "merged_with_previous",
    "merged_with_next",
    "contiguous",
)

# HF `Punctuation`: Rust's `is_ascii_punctuation() || is_punctuation()` (Unicode P*), one char each.
PUNCTUATION_PATTERN = r"[\p{P}!-/:-@\[-`{-~]"
DIGIT_PATTERN = r"\p{N}"  # HF `Digits` (Rust's char::is_numeric: Nd, Nl, No)


# Patterns run as an equivalent that the regex module matches faster (the step keeps, and writes
# out, the original). deepseek-llm's letters step, a class of some 150 ranges: findall over 3 MB
# of the stdlib corpus's lines takes 3.3 s with it (1.9 s with deepseek-coder's \s?\p{L}+) and
# 2.35 s with a \p{L} lookahead in front, which turns the non-letters away before the class is
# tried. Every member of the class is a letter (checked over every code point in the tests), so
# the matches are the same.
FASTER_EQUIVALENTS = {DEEPSEEK_LLM_LETTERS: r"\s?(?=\p{L})" + DEEPSEEK_LLM_LETTERS[len(r"\s?") :]}


@dataclass(frozen=True)
class Split:
    """One HF `Split` step: find `pattern`'s matches (or, with `invert`, the text between them)
    and cut the text around them as `behavior` says."""

    pattern: str
    behavior: Behavior = "isolated"
    invert: bool = False

    def __post_init__(self) -> None:
        if self.behavior not in BEHAVIORS:
            raise TokenizerError(
                f"unknown Split behavior {self.behavior!r}; expected one of {list(BEHAVIORS)}"
            )
        source = FASTER_EQUIVALENTS.get(self.pattern, self.pattern)
        try:
            compiled = regex.compile(source)
        except regex.error as e:
            raise TokenizerError(
                f"Split pattern {self.pattern!r} is not a valid regex: {e}"
            ) from None
        object.__setattr__(self, "_compiled", compiled)
        # An isolated, non-inverted split is `regex.split` around one group, in C: it returns
        # [gap, match, gap, match, ..., gap]. A zero-width match (HF skips those) takes the slow path.
        fast = None
        if self.behavior == "isolated" and not self.invert and compiled.groups == 0:
            fast = regex.compile(f"({source})", compiled.flags).split
        object.__setattr__(self, "_fast_split", fast)

    def to_json(self) -> dict[str, object]:
        """This step as our JSON (`pattern`, `behavior`, `invert`)."""
        return {"pattern": self.pattern, "behavior": self.behavior, "invert": self.invert}

    def split(self, text: str) -> list[str]:
        """The pieces of `text` (none empty), in order."""
        fast = self._fast_split  # type: ignore[attr-defined]
        if fast is not None:
            parts = fast(text)
            if "" not in parts[1::2]:
                return [part for part in parts if part]
        spans: list[tuple[int, int, bool]] = []  # (start, end, is_match), covering the text
        at = 0
        for match in self._compiled.finditer(text):  # type: ignore[attr-defined]
            start, end = match.span()
            if start == end:
                continue
            if start > at:
                spans.append((at, start, self.invert))
            spans.append((start, end, not self.invert))
            at = end
        if at < len(text):
            spans.append((at, len(text), self.invert))
        return [text[a:b] for a, b in _cut(spans, self.behavior)]


def _cut(spans: list[tuple[int, int, bool]], behavior: str) -> list[tuple[int, int]]:
    """HF tokenizers' `split` over spans that tile the text, as (start, end) pieces."""
    if behavior == "isolated":
        return [(a, b) for a, b, _ in spans]
    if behavior == "removed":
        return [(a, b) for a, b, is_match in spans if not is_match]
    out: list[list[int]] = []
    if behavior == "contiguous":
        previous: bool | None = None
        for a, b, is_match in spans:
            if out and is_match == previous:
                out[-1][1] = b
            else:
                out.append([a, b])
            previous = is_match
    elif behavior == "merged_with_previous":
        previous = False
        for a, b, is_match in spans:
            if is_match and not previous and out:
                out[-1][1] = b
            else:
                out.append([a, b])
            previous = is_match
    else:  # merged_with_next
        previous = False
        for a, b, is_match in reversed(spans):
            if is_match and not previous and out:
                out[-1][0] = a
            else:
                out.append([a, b])
            previous = is_match
        out.reverse()
    return [(a, b) for a, b in out]


PreTokenizer = str | tuple[Split, ...] | None


def normalize_pre_tokenizer(pattern: str | Sequence[str | Split] | None) -> PreTokenizer:
    """One regex (a name in `PATTERNS` resolved), or a tuple of `Split` steps (a plain string
    in the sequence is an isolated Split). A one-step isolated sequence becomes its regex.

    Raises TokenizerError for a regex that does not compile or matches the empty string.
    """
    if pattern is None:
        return None
    if isinstance(pattern, str):
        return _resolve(pattern)
    steps = tuple(
        Split(_resolve(step)) if isinstance(step, str) else _as_split(step) for step in pattern
    )
    if not steps:
        return None
    if len(steps) == 1 and steps[0].behavior == "isolated" and not steps[0].invert:
        return steps[0].pattern
    return steps


def _as_split(step: object) -> Split:
    if isinstance(step, Split):
        return step
    if isinstance(step, dict):
        return Split(
            _resolve(step["pattern"]), step.get("behavior", "isolated"), step.get("invert", False)
        )
    raise TokenizerError(f"pre-tokenizer step {step!r} is neither a regex nor a Split")


def _resolve(name_or_regex: str) -> str:
    from llm_tokenizer.patterns import resolve_pattern

    return resolve_pattern(name_or_regex)


def compile_pre_tokenizer(pre: PreTokenizer) -> Callable[[str], list[str]] | None:
    """The function that cuts text into pieces (None: the text is one piece). Text that a single
    regex does not match is kept as pieces of its own, as an isolated Split keeps it."""
    if pre is None:
        return None
    if isinstance(pre, str):
        compiled = regex.compile(pre)
        findall = (
            compiled.findall
            if compiled.groups == 0
            else (lambda text: [m.group() for m in compiled.finditer(text)])
        )
        if pre in PATTERNS.values():
            return findall  # the named patterns match every character

        def split_keeping_gaps(text: str) -> list[str]:
            pieces = findall(text)
            if sum(map(len, pieces)) == len(text):
                return pieces
            return Split(pre).split(text)

        return split_keeping_gaps
    first, *rest = [step.split for step in pre]
    caches = [_PieceCache(step) for step in rest]  # later steps see the same pieces again and again

    def split_sequence(text: str) -> list[str]:
        pieces = first(text)
        for cache in caches:
            pieces = list(itertools.chain.from_iterable(map(cache.__getitem__, pieces)))
        return pieces

    return split_sequence


class _PieceCache(dict):
    """piece -> its pieces under one step; a miss splits and stores (cleared when full)."""

    CAPACITY = 1 << 16
    LONGEST = 256  # characters; longer pieces are split every time

    def __init__(self, split: Callable[[str], list[str]]):
        super().__init__()
        self.split = split

    def __missing__(self, piece: str) -> list[str]:
        pieces = self.split(piece)
        if len(piece) <= self.LONGEST:
            if len(self) >= self.CAPACITY:
                self.clear()
            self[piece] = pieces
        return pieces


def pre_tokenizer_json(pre: PreTokenizer) -> str | list[dict[str, object]] | None:
    """`pre` as our JSON: the regex, or a list of Split objects."""
    if pre is None or isinstance(pre, str):
        return pre
    return [step.to_json() for step in pre]


BYTE_LEVEL_SPLIT = Split(GPT2_PATTERN)  # HF ByteLevel(use_regex=True) inside a Sequence
