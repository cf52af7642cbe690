"""Errors raised by llm-core. Each carries a one-line message that names the problem."""

from __future__ import annotations


class LLMCoreError(Exception):
    """Base class of llm-core's errors."""


class ConfigError(LLMCoreError, ValueError):
    """A model configuration is missing, unreadable or invalid; the message names the field."""


class CheckpointError(LLMCoreError):
    """A checkpoint directory is missing, incomplete, corrupt or of an unsupported kind."""


class CacheFullError(LLMCoreError, ValueError):
    """More tokens were written to a KV cache than it has room for."""
