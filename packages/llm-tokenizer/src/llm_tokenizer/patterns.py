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


# deepseek-llm's letters step (llama.cpp's `deepseek-llm` pre-tokenizer): an optional space and a
# run of letters from an explicit class of cased letters.
DEEPSEEK_LLM_LETTERS = r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
