"""The agent loop (asyncio): stream the model's reply, run each tool call as soon as it is
complete (several at once), feed the results back, and repeat until the model answers
without a call or ``max_steps`` replies have been made. Every step goes to a JSONL
transcript when one is given.

Two ways to talk to a model: a text model (the local engine) gets the tools described in
its system prompt and each call's result as ``<tool_result>`` text; a model with
``native_tools = True`` (an OpenAI-compatible server) gets ``tools=`` and OpenAI's
``tool_calls`` / ``role: "tool"`` messages, and writes its calls back as ``<tool_call>`` text.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_agent.calls import CLOSE, OPEN, CallStream, ToolCall, parse_calls
from llm_agent.protocols import ChatModel
from llm_agent.tools import ToolResult, run_tool, tool_schemas
from llm_agent.workspace import Workspace

INSTRUCTIONS = """You are an agent that works in a folder (the workspace) with tools.
Call a tool by writing <tool_call>{"name": ..., "arguments": {...}}</tool_call>; each result \
comes back in <tool_result></tool_result>. Paths are relative to the workspace. When the task \
is done, answer in plain text without a tool call."""

TOOLS_SECTION = """

# Tools

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True)
class Event:
    """One thing that happened: ``kind`` is ``text`` (a streamed delta: ``data["text"]``),
    ``call`` (``data["call"]``: a :class:`ToolCall`), ``result`` (``data["result"]``: a
    :class:`ToolResult`), ``answer`` (``data["text"]``) or ``stop`` (``data["reason"]``)."""

    kind: str
    step: int
    data: dict[str, Any]


@dataclass
class AgentResult:
    """How a task ended: ``stop_reason`` is ``answer`` or ``max_steps``."""

    answer: str
    steps: int
    stop_reason: str
    calls: list[ToolResult] = field(default_factory=list)


class Transcript:
    """A JSONL file with one line per step event: the task, each model reply, call, result
    and the end. Lines are flushed as they are written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")

    def write(self, event: str, step: int, **data: Any) -> None:
        line = {"time": round(time.time(), 3), "step": step, "event": event, **data}
        self.file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Agent:
    """An agent that does tasks in ``workspace`` with ``model``.

    ``sampling`` goes to every ``model.stream`` call (OpenAI names: temperature, max_tokens,
    seed, ...). ``on_event`` sees each :class:`Event` as it happens. The conversation is kept
    between :meth:`run` calls, so a second task can refer to the first.
    """

    def __init__(
        self,
        model: ChatModel,
        workspace: Workspace,
        *,
        max_steps: int = 10,
        sampling: dict[str, Any] | None = None,
        transcript: str | os.PathLike[str] | Transcript | None = None,
        on_event: Callable[[Event], None] | None = None,
        instructions: str = INSTRUCTIONS,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.model = model
        self.workspace = workspace
        self.max_steps = max_steps
        self.sampling = dict(sampling or {})
        self.native = bool(getattr(model, "native_tools", False))
        self.tools = tool_schemas(workspace)
        self.on_event = on_event
        self.transcript = (
            transcript
            if isinstance(transcript, Transcript) or transcript is None
            else Transcript(transcript)
        )
        system = instructions
        if not self.native:
            system += TOOLS_SECTION.format(tools="\n".join(json.dumps(t) for t in self.tools))
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}]

    async def run(self, task: str) -> AgentResult:
        """Do ``task``: returns the final answer (or the last reply when ``max_steps`` ran
        out). Errors of the model (connection, bad sampling) propagate from its ``stream``."""
        self.messages.append({"role": "user", "content": task})
        self._log("task", 0, text=task)
        results: list[ToolResult] = []
        text = ""
        for step in range(1, self.max_steps + 1):
            text, calls, step_results = await self._step(step)
            results += step_results
            if not calls:
                self._emit("answer", step, text=text)
                self._emit("stop", step, reason="answer")
                return AgentResult(text, step, "answer", results)
        self._emit("stop", self.max_steps, reason="max_steps")
        return AgentResult(text, self.max_steps, "max_steps", results)

    async def _step(self, step: int) -> tuple[str, list[ToolCall], list[ToolResult]]:
        stream = CallStream()
        raw: list[str] = []  # the reply as the model wrote it, calls included
        shown: list[str] = []
        calls: list[ToolCall] = []
        running: list[asyncio.Task[ToolResult]] = []
        sampling = {**self.sampling, **({"tools": self.tools} if self.native else {})}

        def start(call: ToolCall) -> None:
            calls.append(call)
            self._emit("call", step, call=call)
            running.append(asyncio.create_task(asyncio.to_thread(run_tool, self.workspace, call)))

        try:
            async for delta in self.model.stream(list(self.messages), **sampling):
                raw.append(delta)
                text, blocks = stream.push(delta)
                if text:
                    shown.append(text)
                    self._emit("text", step, text=text)
                for block in blocks:
                    for call in parse_calls(block):
                        start(call)
            text, unfinished = stream.finish()
            if text:
                shown.append(text)
                self._emit("text", step, text=text)
            if unfinished is not None:
                start(
                    ToolCall(
                        "", {}, error=f"malformed tool call (no {CLOSE}): {OPEN}{unfinished[:200]}"
                    )
                )
            results = list(await asyncio.gather(*running))
        except BaseException:
            for task in running:
                task.cancel()
            raise
        reply = "".join(shown).strip()
        self._log("reply", step, text=reply, calls=[c.openai() for c in calls])
        for result in results:
            self._emit("result", step, result=result)
        self._remember(reply if self.native else "".join(raw).strip(), calls, results)
        return reply, calls, results

    def _remember(self, reply: str, calls: list[ToolCall], results: list[ToolResult]) -> None:
        if not calls:
            self.messages.append({"role": "assistant", "content": reply})
        elif self.native:
            self.messages.append(
                {
                    "role": "assistant",
                    "content": reply or None,
                    "tool_calls": [c.openai() for c in calls],
                }
            )
            self.messages += [
                {"role": "tool", "tool_call_id": r.call.id, "content": r.content} for r in results
            ]
        else:
            self.messages.append({"role": "assistant", "content": reply})
            self.messages.append(
                {
                    "role": "user",
                    "content": "\n".join(
                        f'<tool_result name="{r.call.name}">\n{r.content}\n</tool_result>'
                        for r in results
                    ),
                }
            )

    def _emit(self, kind: str, step: int, **data: Any) -> None:
        if kind == "call":
            call = data["call"]
            self._log(
                "call", step, id=call.id, name=call.name, arguments=call.arguments, error=call.error
            )
        elif kind == "result":
            result = data["result"]
            self._log(
                "result",
                step,
                id=result.call.id,
                name=result.call.name,
                content=result.content,
                is_error=result.is_error,
            )
        elif kind in ("answer", "stop"):
            self._log(kind, step, **data)
        if self.on_event is not None:
            self.on_event(Event(kind, step, data))

    def _log(self, event: str, step: int, **data: Any) -> None:
        if self.transcript is not None:
            self.transcript.write(event, step, **data)

    def close(self) -> None:
        """Close the transcript file."""
        if self.transcript is not None:
            self.transcript.close()
