"""The tools as the model sees them: OpenAI function schemas, argument checks, and each
call's result as text (an error result is text too, for the model to read)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_agent.calls import ToolCall
from llm_agent.errors import ToolError
from llm_agent.workspace import Workspace


def _function(name: str, description: str, **properties: tuple[str, str, bool]) -> dict[str, Any]:
    """An OpenAI ``tools`` entry; each property is ``(type, description, required)``."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    key: {"type": kind, "description": text}
                    for key, (kind, text, _) in properties.items()
                },
                "required": [key for key, (_, _, needed) in properties.items() if needed],
                "additionalProperties": False,
            },
        },
    }


FILE_TOOLS = [
    _function(
        "read_file",
        "Read a UTF-8 text file in the workspace.",
        path=("string", "Path relative to the workspace folder.", True),
    ),
    _function(
        "write_file",
        "Write a text file in the workspace (replacing it; parent folders are made).",
        path=("string", "Path relative to the workspace folder.", True),
        content=("string", "The whole new content of the file.", True),
    ),
    _function(
        "list_dir",
        "List a folder in the workspace.",
        path=("string", "Path relative to the workspace folder; default '.'.", False),
    ),
]
COMMAND_TOOL = _function(
    "run_command",
    "Run a shell command (sh -c) in the workspace folder, in a sandbox; returns its exit code "
    "and output.",
    command=("string", "The command line.", True),
    timeout=("number", "Seconds before it is killed (capped by the agent's limit).", False),
)
LIST_LIMIT = 500  # entries of a folder shown to the model
_TYPES = {"string": str, "number": (int, float)}


def tool_schemas(workspace: Workspace) -> list[dict[str, Any]]:
    """The tools to offer: the file tools, and ``run_command`` when commands may run at all
    (allowed, or approved at a prompt)."""
    commands = workspace.allow_commands or workspace.approve is not None
    return [*FILE_TOOLS, *([COMMAND_TOOL] if commands else [])]


@dataclass(frozen=True)
class ToolResult:
    """What a call gave back: ``content`` is what the model reads."""

    call: ToolCall
    content: str
    is_error: bool


def run_tool(workspace: Workspace, call: ToolCall) -> ToolResult:
    """Run ``call`` on ``workspace`` (blocking). Never raises for the model's mistakes or a
    tool's refusal: they come back as an error result."""
    if call.error is not None:
        return ToolResult(call, f"error: {call.error}", True)
    schema = next(
        (t for t in [*FILE_TOOLS, COMMAND_TOOL] if t["function"]["name"] == call.name), None
    )
    if schema is None:
        names = ", ".join(t["function"]["name"] for t in tool_schemas(workspace))
        return ToolResult(call, f"error: no tool named {call.name!r} (the tools: {names})", True)
    problem = _check_arguments(schema["function"]["parameters"], call.arguments)
    if problem:
        return ToolResult(call, f"error: {call.name}: {problem}", True)
    try:
        return ToolResult(call, _dispatch(workspace, call.name, call.arguments), False)
    except ToolError as exc:
        return ToolResult(call, f"error: {exc}", True)
    except OSError as exc:  # the OS refused something the checks let through (no space, ...)
        return ToolResult(call, f"error: {call.name}: {exc.strerror or exc}", True)


def _check_arguments(parameters: Mapping[str, Any], arguments: Mapping[str, Any]) -> str | None:
    properties = parameters["properties"]
    unknown = sorted(set(arguments) - set(properties))
    if unknown:
        return f"unknown argument {unknown[0]!r} (it takes {', '.join(properties)})"
    for key in parameters["required"]:
        if key not in arguments:
            return f"missing argument {key!r}"
    for key, value in arguments.items():
        want = properties[key]["type"]
        if not isinstance(value, _TYPES[want]) or isinstance(value, bool):
            return f"argument {key!r} must be a {want}, got {json.dumps(value)[:50]}"
    return None


def _dispatch(workspace: Workspace, name: str, args: Mapping[str, Any]) -> str:
    if name == "read_file":
        return workspace.read_file(args["path"])
    if name == "write_file":
        written = workspace.write_file(args["path"], args["content"])
        return f"wrote {written} bytes to {args['path']}"
    if name == "list_dir":
        entries = workspace.list_dir(args.get("path", "."))
        if not entries:
            return "(empty folder)"
        more = len(entries) - LIST_LIMIT
        lines = "\n".join(
            f"{e.name}/"
            if e.kind == "dir"
            else f"{e.name} ({e.size} bytes)"
            if e.kind == "file"
            else f"{e.name} ({e.kind})"
            for e in entries[:LIST_LIMIT]
        )
        return lines + (f"\n… {more} more entries not shown" if more > 0 else "")
    result = workspace.run_command(args["command"], args.get("timeout"))
    lines = [
        "timed out: the command and its children were killed"
        if result.timed_out
        else f"exit code: {result.exit_code}"
    ]
    if not result.sandboxed:
        lines.append("(ran unconfined: no sandbox on this machine)")
    lines.append(result.output)
    if result.truncated:
        lines.append(
            f"[output truncated: {result.output_bytes} bytes written, the first "
            f"{len(result.output.encode())} shown]"
        )
    return "\n".join(lines)
