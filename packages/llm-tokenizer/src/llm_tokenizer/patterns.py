"""Pre-tokenization patterns, selectable by name, and GPT-2's byte-to-unicode map."""

from __future__ import annotations

import functools
from collections.abc import Callable

import regex

from llm_tokenizer.errors import TokenizerError

# GPT-2 (also HF tokenizers' built-in ByteLevel pre-tokenizer regex).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# cl100k_base (GPT-3.5/GPT-4), as tiktoken writes it.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Llama 3, as its tokenizer.json writes it (the same splits as cl100k, in HF's spelling).
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2: Llama 3's pattern with single digits.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

PATTERNS: dict[str, str] = {
    "gpt2": GPT2_PATTERN,
    "gpt4": GPT4_PATTERN,
    "cl100k": GPT4_PATTERN,
    "llama3": LLAMA3_PATTERN,
    "qwen2": QWEN2_PATTERN,
}


def resolve_pattern(name_or_regex: str) -> str:
    """Return the regex for a pattern name in `PATTERNS`, or `name_or_regex` itself as a custom regex.

    Raises TokenizerError when a custom regex does not compile or can match the empty string.
    """
    if name_or_regex in PATTERNS:
        return PATTERNS[name_or_regex]
    try:
        compiled = regex.compile(name_or_regex)
    except regex.error as e:
        raise TokenizerError(
            f"pattern {name_or_regex!r} is neither a name in {sorted(PATTERNS)} nor a valid regex: {e}"
        ) from None
    if compiled.match("") is not None:
        raise TokenizerError(f"pattern {name_or_regex!r} matches the empty string")
    return name_or_regex


def compile_splitter(pattern: str) -> Callable[[str], list[str]]:
    """A function returning the pattern's matches in order (whole matches, even with groups)."""
    compiled = regex.compile(pattern)
    if compiled.groups == 0:
        return compiled.findall
    return lambda text: [match.group() for match in compiled.finditer(text)]


def pattern_name(pattern: str) -> str | None:
    """Return the name under which `pattern` is listed in `PATTERNS`, or None for a custom regex."""
    return next((name for name, p in PATTERNS.items() if p == pattern), None)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte value to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the other 68 are shifted to U+0100 and up, so a
    byte-level token is always a readable, JSON-safe string (b" " -> "Ġ", b"\\n" -> "Ċ").
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of `bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}
