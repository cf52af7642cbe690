"""The interactive chat: prompt-toolkit for input, rich for streamed Markdown output."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llm_agent import ToolError
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from llm_repl.backends import BackendError
from llm_repl.conversation import SETTINGS, Conversation, ConversationError
from llm_repl.rag import Rag, RagError, sources
from llm_repl.tools import AgentMode

COMMANDS = {
    "/help": "this list",
    "/reset": "forget the conversation (keeps /system and /set)",
    "/system": "TEXT: set the system prompt (no TEXT: clear it)",
    "/set": f"NAME VALUE: set a sampling option ({', '.join(SETTINGS)}); no arguments: show them",
    "/save": "FILE: write the conversation as JSON",
    "/load": "FILE: read a conversation written by /save",
    "/model": "show the backend and the models it offers",
    "/rag": "DIR: answer from the documents in DIR (or an llm-rag index); /rag off: stop",
    "/tools": "DIR: let the model read, write and list files and run commands in DIR "
    "(confined; each command asked for); /tools off: stop",
    "/exit": "leave (Ctrl-D too)",
}


def key_bindings() -> KeyBindings:
    """Enter sends; Alt-Enter or Esc-Enter inserts a newline."""
    kb = KeyBindings()

    @kb.add("enter")
    def _send(event: Any) -> None:
        event.current_buffer.validate_and_handle()

    @kb.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    return kb


class Repl:
    """One chat: reads a line, runs a slash command or streams the backend's answer."""

    def __init__(
        self,
        backend: Any,
        *,
        console: Console | None = None,
        history_path: Path | None = None,
        conversation: Conversation | None = None,
        session: PromptSession | None = None,
    ) -> None:
        self.backend = backend
        self.console = console or Console()
        self.conversation = conversation or Conversation()
        self.rag: Rag | None = None
        history = FileHistory(str(history_path)) if history_path else InMemoryHistory()
        if history_path:
            history_path.parent.mkdir(parents=True, exist_ok=True)
        self.session = session or PromptSession(
            history=history,
            completer=WordCompleter(list(COMMANDS), sentence=True),
            complete_while_typing=True,
            key_bindings=key_bindings(),
            multiline=True,
            prompt_continuation="... ",
        )
        self.tools: AgentMode | None = None  # while /tools is on
        self.handlers: dict[str, Callable[[str], Awaitable[bool]]] = {
            "/help": self.cmd_help,
            "/reset": self.cmd_reset,
            "/system": self.cmd_system,
            "/set": self.cmd_set,
            "/save": self.cmd_save,
            "/load": self.cmd_load,
            "/model": self.cmd_model,
            "/rag": self.cmd_rag,
            "/tools": self.cmd_tools,
            "/exit": self.cmd_exit,
        }

    async def run(self) -> int:
        """Chat until /exit or Ctrl-D; Ctrl-C at the prompt clears the line."""
        self.console.print(
            f"[bold]llm-repl[/bold] chatting with {self.backend.name}. "
            "[dim]/help for commands, Alt-Enter for a new line, Ctrl-D to leave.[/dim]"
        )
        while True:
            try:
                text = await self.session.prompt_async("> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return 0
            text = text.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not await self.command(text):
                    return 0
                continue
            await self.answer(text)

    async def command(self, text: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, arg = text.partition(" ")
        handler = self.handlers.get(name)
        if handler is None:
            self.console.print(f"[red]unknown command {name}[/red] [dim](/help lists them)[/dim]")
            return True
        return await handler(arg.strip())

    async def answer(self, text: str) -> str | None:
        """Stream the reply to ``text``; Ctrl-C stops it and keeps what was said so far.

        Under ``/rag`` the question goes with the passages that answer it (as many as fit in
        the backend's context), and the sources the reply cites are printed under it; the history then keeps the bare question, so
        passages do not pile up in the context turn after turn.
        """
        question, hits = text, None
        if self.rag is not None:
            try:
                text, hits = await asyncio.to_thread(
                    self.rag.prompt,
                    text,
                    self.backend,
                    self.conversation.as_messages(),
                    self.conversation.settings.get("max_tokens"),
                )
            except (RagError, BackendError) as exc:  # nothing is sent
                self.console.print(Text(f"/rag: {exc}", style="red"))
                return None
        self.conversation.messages.append({"role": "user", "content": text})
        work = self.tools.answer(text) if self.tools is not None else self._stream_reply()
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            reply = await task
        except asyncio.CancelledError:
            reply = self._partial if self.tools is None else None  # an agent's steps: none kept
            self.console.print("[dim]generation stopped[/dim]")
        except BackendError as exc:
            self.conversation.messages.pop()  # the question was not answered
            self.console.print(f"[red]error:[/red] {exc}")
            return None
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)
        if reply is None:  # the agent failed or gave up; it has said why
            self.conversation.messages.pop()
            return None
        self.conversation.messages.append({"role": "assistant", "content": reply})
        if hits:
            self.console.print(Text("\n".join(sources(reply, hits)), style="dim"))
            self.conversation.messages[-2]["content"] = question
        return reply

    async def _stream_reply(self) -> str:
        self._partial = ""
        start, first, deltas = time.perf_counter(), None, 0
        with Live(
            Markdown(""), console=self.console, refresh_per_second=12, vertical_overflow="visible"
        ) as live:
            async for delta in self.backend.stream(
                self.conversation.as_messages(), **self.conversation.settings
            ):
                first = first or time.perf_counter()
                deltas += 1
                self._partial += delta
                live.update(Markdown(self._partial))
        end = time.perf_counter()
        usage = getattr(self.backend, "last_usage", None) or {}
        tokens = usage.get("completion_tokens", deltas)
        self.console.print(Text(stats_line(tokens, start, first, end), style="dim"))
        return self._partial

    # -- slash commands ------------------------------------------------------------------------

    async def cmd_help(self, arg: str) -> bool:
        for name, what in COMMANDS.items():
            self.console.print(f"  [bold]{name}[/bold] {what}")
        return True

    async def cmd_reset(self, arg: str) -> bool:
        self.conversation.reset()
        self.console.print("[dim]conversation cleared[/dim]")
        return True

    async def cmd_system(self, arg: str) -> bool:
        self.conversation.system = arg or None
        self.console.print(f"[dim]system prompt {'set' if arg else 'cleared'}[/dim]")
        return True

    async def cmd_set(self, arg: str) -> bool:
        parts = arg.split()
        if not parts:
            shown = (
                ", ".join(f"{k}={v}" for k, v in self.conversation.settings.items()) or "defaults"
            )
            self.console.print(f"[dim]settings: {shown}[/dim]")
            return True
        if len(parts) != 2:
            self.console.print("[red]usage: /set NAME VALUE[/red]")
            return True
        try:
            value = self.conversation.set(*parts)
        except ConversationError as exc:
            self.console.print(f"[red]{exc}[/red]")
            return True
        self.console.print(f"[dim]{parts[0]} = {value}[/dim]")
        return True

    async def cmd_save(self, arg: str) -> bool:
        if not arg:
            self.console.print("[red]usage: /save FILE[/red]")
            return True
        try:
            path = self.conversation.save(arg)
        except OSError as exc:
            self.console.print(f"[red]cannot write {arg}: {exc.strerror or exc}[/red]")
            return True
        self.console.print(f"[dim]saved {len(self.conversation.messages)} messages to {path}[/dim]")
        return True

    async def cmd_load(self, arg: str) -> bool:
        if not arg:
            self.console.print("[red]usage: /load FILE[/red]")
            return True
        try:
            self.conversation = Conversation.load(arg)
        except ConversationError as exc:
            self.console.print(f"[red]{exc}[/red]")
            return True
        self.console.print(
            f"[dim]loaded {len(self.conversation.messages)} messages from {arg}[/dim]"
        )
        return True

    async def cmd_model(self, arg: str) -> bool:
        try:
            models = await self.backend.list_models()
        except BackendError as exc:
            self.console.print(f"[red]error:[/red] {exc}")
            return True
        self.console.print(f"backend: {self.backend.name}; models: {', '.join(models) or 'none'}")
        return True

    async def cmd_rag(self, arg: str) -> bool:
        if arg == "off" or not arg:
            if arg == "off":
                self.rag = None
            state = f"answering from {self.rag.directory}" if self.rag else "off"
            self.console.print(Text(f"/rag: {state} (/rag DIR answers from DIR)", style="dim"))
            return True
        try:
            with self.console.status(Text(f"indexing {arg}")):
                self.rag = await asyncio.to_thread(Rag.open, arg)
        except RagError as exc:
            self.console.print(Text(str(exc), style="red"))
            return True
        self.console.print(Text(f"{self.rag.summary}; questions are answered from it", style="dim"))
        return True

    async def cmd_tools(self, arg: str) -> bool:
        if arg == "off" or not arg:
            if arg == "off":
                self.tools = None
            state = self.tools.describe() if self.tools else "tools off (/tools DIR turns them on)"
            self.console.print(f"[dim]{state}[/dim]")
            return True
        try:
            self.tools = AgentMode(
                self.backend, arg, self.console, dict(self.conversation.settings)
            )
        except ToolError as exc:
            self.console.print(f"[red]{exc}[/red]")
            return True
        self.console.print(self.tools.describe())
        return True

    async def cmd_exit(self, arg: str) -> bool:
        return False


def stats_line(tokens: int, start: float, first: float | None, end: float) -> str:
    """``12 tokens, 34.5 tokens/s, first token 0.12 s`` (decode rate after the first token)."""
    if first is None:
        return "0 tokens"
    rate = (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0
    return f"{tokens} tokens, {rate:.1f} tokens/s, first token {first - start:.2f} s"


async def answer_once(
    backend: Any, conversation: Conversation, question: str, out: Any = None
) -> int:
    """Print the plain streamed answer to ``question`` (for pipes and scripts)."""
    out = out or sys.stdout
    conversation.messages.append({"role": "user", "content": question})
    async for delta in backend.stream(conversation.as_messages(), **conversation.settings):
        out.write(delta)
        out.flush()
    out.write("\n")
    return 0
