"""``/tools DIR``: the conversation goes through llm-agent, whose tools read, write and list
files in DIR and run commands there (in its sandbox, each command approved at a prompt)."""

from __future__ import annotations

from typing import Any

from llm_agent import Agent, AgentError, Workspace
from llm_agent.cli import commands_line, printer
from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm

from llm_repl.backends import BackendError


def confirm(console: Console, command: str) -> bool:
    """Ask whether the model's ``command`` may run (the default is no)."""
    console.print(f"[bold yellow]the model wants to run:[/bold yellow] {escape(command)}")
    return Confirm.ask("run it?", default=False, console=console)


class AgentMode:
    """The agent on ``directory`` for this chat, with the sampling settings of the moment;
    its conversation lasts until /tools off.

    Raises :class:`llm_agent.ToolError` when ``directory`` is not a folder.
    """

    def __init__(
        self, backend: Any, directory: str, console: Console, sampling: dict[str, Any]
    ) -> None:
        self.console = console
        self.workspace = Workspace(directory, approve=lambda c: confirm(console, c))
        self.agent = Agent(backend, self.workspace, sampling=sampling, on_event=printer(console))

    def describe(self) -> str:
        return f"tools on in {self.workspace.root}; {commands_line(self.workspace)}"

    async def answer(self, text: str) -> str | None:
        """The agent's final answer to ``text`` (None after an error, which is printed)."""
        try:
            result = await self.agent.run(text)
        except (AgentError, BackendError) as exc:
            self.console.print(f"[red]error:[/red] {escape(str(exc))}")
            return None
        self.console.print()
        if result.stop_reason == "max_steps":
            return None
        return result.answer
