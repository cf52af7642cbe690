"""Tool calls in a streamed reply: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

The Hermes / Qwen2.5 convention that llm-serve also speaks. :class:`CallStream` splits text
deltas into the text to show and each call's block as soon as its closing tag arrives, so a
call can run while the model is still writing the next one.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """A call the model made. ``error`` says why it cannot run (malformed JSON, no name,
    arguments that are not an object); such a call gets ``error`` back as its result."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    error: str | None = None

    def openai(self) -> dict[str, Any]:
        """The call as an entry of an OpenAI assistant message's ``tool_calls``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }

    def text(self) -> str:
        """The call as the model writes it, for the transcript and for text-only models."""
        return f"{OPEN}{json.dumps({'name': self.name, 'arguments': self.arguments})}{CLOSE}"


def parse_calls(block: str) -> list[ToolCall]:
    """The calls written between ``<tool_call>`` and ``</tool_call>``: one JSON object (the
    Hermes form) or a JSON list of them (the form SmolLM2 and APIGen-trained models write).
    Never raises: a block that is not a call comes back with ``error`` set."""
    try:
        value = json.loads(block)
    except ValueError as exc:
        shown = block.strip()[:200]
        return [ToolCall("", {}, error=f"malformed tool call (not JSON: {exc.msg}): {shown}")]
    if isinstance(value, list):
        return [_call(item, json.dumps(item)[:200]) for item in value]
    return [_call(value, block.strip()[:200])]


def _call(call: Any, shown: str) -> ToolCall:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return ToolCall(
            "",
            {},
            error=f'malformed tool call (want {{"name": ..., "arguments": {{...}}}}): {shown}',
        )
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI sends arguments as JSON text
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return _bad(call, f"its arguments are not JSON ({exc.msg})")
    if not isinstance(arguments, dict):
        return _bad(call, "its arguments are not a JSON object")
    ident = call.get("id")
    if isinstance(ident, str) and ident:
        return ToolCall(call["name"], arguments, id=ident)
    return ToolCall(call["name"], arguments)


def _bad(call: dict[str, Any], why: str) -> ToolCall:
    ident = call.get("id") if isinstance(call.get("id"), str) else None
    name = call["name"]
    error = f"malformed call of {name}: {why}"
    return ToolCall(name, {}, id=ident, error=error) if ident else ToolCall(name, {}, error=error)


class CallStream:
    """Splits streamed text into text to show and complete call blocks.

    :meth:`push` returns ``(text, blocks)``; text that may be the start of ``<tool_call>`` is
    held back until the next delta decides it. :meth:`finish` returns the text left and an
    unterminated block (or None).
    """

    def __init__(self) -> None:
        self.buffer = ""
        self.inside = False

    def push(self, delta: str) -> tuple[str, list[str]]:
        self.buffer += delta
        text: list[str] = []
        blocks: list[str] = []
        while True:
            if self.inside:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    break
                blocks.append(self.buffer[:end])
                self.buffer = self.buffer[end + len(CLOSE) :]
                self.inside = False
            else:
                start = self.buffer.find(OPEN)
                if start < 0:
                    keep = _partial_tag(self.buffer)
                    text.append(self.buffer[: len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep :]
                    break
                text.append(self.buffer[:start])
                self.buffer = self.buffer[start + len(OPEN) :]
                self.inside = True
        return "".join(text), blocks

    def finish(self) -> tuple[str, str | None]:
        rest, inside = self.buffer, self.inside
        self.buffer, self.inside = "", False
        return ("", rest) if inside else (rest, None)


def _partial_tag(text: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``<tool_call>``."""
    for k in range(min(len(text), len(OPEN) - 1), 0, -1):
        if OPEN.startswith(text[-k:]):
            return k
    return 0
