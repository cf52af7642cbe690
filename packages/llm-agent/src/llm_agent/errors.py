"""Errors of llm-agent: each message is one line that says what was refused and why."""

from __future__ import annotations


class AgentError(Exception):
    """The agent cannot go on (a model that cannot be reached, a bad option); one line."""


class ToolError(AgentError):
    """A tool refused or failed; the message is what the model (or the caller) reads."""
