"""Errors raised by llm-infer. Each carries a one-line message that names the problem."""

from __future__ import annotations


class InferError(Exception):
    """Base class of llm-infer's errors."""


class LoadError(InferError):
    """A model source is missing, of an unsupported kind, or incomplete; the message names it."""


class SamplingError(InferError, ValueError):
    """A sampling parameter is invalid; the message names the parameter and the allowed range,
    and ``param`` holds the parameter's name (None when no single one is at fault)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthError(InferError, ValueError):
    """A request needs more tokens than the model's (or the cache's) context holds."""


class EngineBusyError(InferError):
    """The engine's queue is full; retry later."""


class EngineClosedError(InferError):
    """A request was sent to an engine that is not running."""
