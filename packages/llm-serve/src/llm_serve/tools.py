"""Tool calling: the tools go into the prompt, and ``<tool_call>{json}</tool_call>`` comes back out.

The prompt follows the Hermes / Qwen2.5 convention: the tools' JSON schemas inside
``<tools></tools>`` in the system message, and each call the model makes as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. ``tool_choice="required"`` or a
named function starts the reply with ``<tool_call>`` (and the name), so the model can only
continue a call; the arguments are still the model's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_serve.schemas import ChatMessage, NamedToolChoice, Tool, ToolChoice

OPEN, CLOSE = "<tool_call>", "</tool_call>"

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True)
class ParsedToolCall:
    """A call the model made; ``arguments`` is JSON text, as OpenAI returns it."""

    id: str
    name: str
    arguments: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI's ``tool_calls`` entry (with ``index`` when streamed)."""
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return call if index is None else {"index": index, **call}


def tools_prompt(tools: Sequence[Tool]) -> str:
    """The system-prompt section that describes ``tools`` and the call format."""
    return TOOLS_PROMPT.format(
        tools="\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in tools)
    )


def reply_prefix(tool_choice: ToolChoice | None) -> str:
    """Text the assistant's reply starts with: a forced call's opening, or nothing."""
    if isinstance(tool_choice, NamedToolChoice):
        return f'{OPEN}\n{{"name": {json.dumps(tool_choice.function.name)}, "arguments": '
    return f"{OPEN}\n" if tool_choice == "required" else ""


def render_tool_calls(message: ChatMessage) -> str:
    """An assistant message's earlier ``tool_calls`` as the text the model would have written."""
    return "\n".join(
        f"{OPEN}\n"
        + json.dumps({"name": c.function.name, "arguments": _loads_or_text(c.function.arguments)})
        + f"\n{CLOSE}"
        for c in message.tool_calls or ()
    )


def _loads_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_call(block: str) -> ParsedToolCall | None:
    """The call in the text between ``<tool_call>`` and ``</tool_call>``, or None if it is not one."""
    try:
        call = json.loads(block)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ParsedToolCall(f"call_{uuid.uuid4().hex[:24]}", call["name"], text)


class ToolCallParser:
    """Splits streamed text into content and tool calls.

    :meth:`push` returns the content that is safe to show and the calls completed so far; text
    that may be the start of ``<tool_call>`` is held back until it is decided. A block that is
    not valid JSON with a ``name`` is given back as content, unchanged.
    """

    def __init__(self) -> None:
        self.buffer = ""
        self.inside = False

    def push(self, text: str) -> tuple[str, list[ParsedToolCall]]:
        self.buffer += text
        content, calls = [], []
        while True:
            if self.inside:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    break
                block = self.buffer[len(OPEN) : end]
                call = parse_call(block)
                if call is None:
                    content.append(self.buffer[: end + len(CLOSE)])
                else:
                    calls.append(call)
                self.buffer = self.buffer[end + len(CLOSE) :]
                self.inside = False
            else:
                start = self.buffer.find(OPEN)
                if start < 0:
                    hold = _partial_suffix(self.buffer, OPEN)
                    content.append(self.buffer[: len(self.buffer) - hold])
                    self.buffer = self.buffer[len(self.buffer) - hold :]
                    break
                content.append(self.buffer[:start])
                self.buffer = self.buffer[start:]
                self.inside = True
        return "".join(content), calls

    def finish(self) -> str:
        """The text still held back (an unfinished call or a partial tag), as content."""
        text, self.buffer, self.inside = self.buffer, "", False
        return text


def parse_tool_calls(text: str) -> tuple[str, list[ParsedToolCall]]:
    """``(content, calls)`` of a whole reply; content is stripped of the space around calls."""
    parser = ToolCallParser()
    content, calls = parser.push(text)
    content += parser.finish()
    return (content.strip() if calls else content), calls


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``tag``."""
    return next(
        (k for k in range(min(len(text), len(tag) - 1), 0, -1) if tag.startswith(text[-k:])), 0
    )
