"""Errors of llm-train: each carries a one-line message for the CLI."""


class TrainError(Exception):
    """Base class of llm-train's errors."""


class DataError(TrainError):
    """Bad input data or a bad prepared directory: the message names the file (and line)."""


class RunConfigError(TrainError):
    """A run config that is missing, malformed or inconsistent."""
