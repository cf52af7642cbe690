"""Errors raised by llm-tokenizer. Each carries a one-line message that names the problem."""

from __future__ import annotations


class TokenizerError(ValueError):
    """A tokenizer file, vocabulary or argument is invalid or unsupported; the message says which."""


class DisallowedSpecialTokenError(TokenizerError):
    """Text given to `encode` contains a special token that the caller disallowed."""


class TokenizerWarning(UserWarning):
    """Encoding dropped text that the vocabulary cannot spell (as HF tokenizers drops it)."""
