"""llm-rag's errors: one base class, so front ends catch one thing and print its message."""

from __future__ import annotations


class RagError(Exception):
    """A problem with retrieval input or an index on disk; the message names it in one line."""


class IndexFormatError(RagError):
    """A saved index that is missing, of another format, or of an unknown format version."""


class EmptyIndexError(RagError):
    """A query against an index that holds nothing yet."""
