"""The `llm-agent` console script: do one task in a workspace, printing each step."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm

from llm_agent import __version__
from llm_agent.agent import Agent, Event
from llm_agent.errors import AgentError
from llm_agent.workspace import COMMAND_TIMEOUT, Workspace

RESULT_LINES = 12  # lines of a tool result shown; the model gets all of it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-agent",
        description="Do a task with a model that reads, writes and lists files and runs "
        "commands, confined to one folder.",
        epilog="Exit status: 0 answered, 1 an error, 3 --max-steps ran out before an answer.",
    )
    parser.add_argument("task", help="what to do, in words")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", metavar="SRC", help="a local model (checkpoint, HF folder, GGUF, demo)"
    )
    source.add_argument("--server", metavar="URL", help="an OpenAI-compatible server (llm-serve)")
    parser.add_argument(
        "--server-model",
        metavar="NAME",
        help="the model to ask the server for (default: its first)",
    )
    parser.add_argument("--api-key", help="the server's API key (default: $OPENAI_API_KEY)")
    parser.add_argument(
        "--workspace", required=True, metavar="DIR", help="the only folder the tools may touch"
    )
    parser.add_argument(
        "--allow-commands", action="store_true", help="run commands without asking (in the sandbox)"
    )
    parser.add_argument(
        "--allow",
        action="append",
        metavar="PATTERN",
        dest="allowlist",
        help="with --allow-commands, run only commands matching this shell pattern without asking (repeatable)",
    )
    parser.add_argument(
        "--allow-network", action="store_true", help="let sandboxed commands use the network"
    )
    parser.add_argument(
        "--unconfined-commands",
        action="store_true",
        help="where no sandbox exists, run commands unconfined, each approved at the prompt",
    )
    parser.add_argument(
        "--command-timeout",
        type=float,
        default=COMMAND_TIMEOUT,
        metavar="S",
        help="seconds a command may run",
    )
    parser.add_argument(
        "--max-steps", type=int, default=10, metavar="N", help="model replies before giving up"
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="tokens per reply at most")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument(
        "--transcript",
        metavar="FILE",
        help="the JSONL transcript (default: ~/.local/state/llm-agent/<time>.jsonl)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        if args.max_steps < 1:
            raise AgentError(f"--max-steps must be at least 1, got {args.max_steps}")
        if not args.command_timeout > 0:
            raise AgentError(f"--command-timeout must be positive, got {args.command_timeout}")
        return asyncio.run(_run(args, console))
    except AgentError as exc:
        if args.debug:
            raise
        err.print(f"[red]llm-agent: {escape(str(exc))}[/red]")
        return 1
    except KeyboardInterrupt:
        err.print("[yellow]llm-agent: interrupted[/yellow]")
        return 130


def approver(console: Console) -> Any:
    """An approval prompt for commands, or None where nobody can answer (stdin not a terminal)."""
    if not sys.stdin.isatty():
        return None

    def ask(command: str) -> bool:
        console.print(f"[bold yellow]the model wants to run:[/bold yellow] {escape(command)}")
        return Confirm.ask("run it?", default=False, console=console)

    return ask


def commands_line(ws: Workspace) -> str:
    """One line that says plainly what may happen to commands."""
    if not ws.sandboxed:
        if ws.unconfined_commands and ws.approve is not None:
            return "[bold red]commands: NO SANDBOX on this machine; each runs UNCONFINED after you approve it[/bold red]"
        return "[yellow]commands: refused (no sandbox on this machine: install bubblewrap)[/yellow]"
    net = "network on" if ws.allow_network else "no network"
    if ws.allow_commands:
        only = f", only {', '.join(ws.allowlist)} without asking" if ws.allowlist else ""
        return f"commands: allowed in the bubblewrap sandbox ({net}{only})"
    if ws.approve is not None:
        return f"commands: each asked for at the prompt, then run in the bubblewrap sandbox ({net})"
    return "commands: off (--allow-commands turns them on)"


def printer(console: Console) -> Any:
    """An ``on_event`` that prints the agent's steps with rich."""
    state = {"step": 0}

    def show(event: Event) -> None:
        if event.step != state["step"] and event.kind in ("text", "call"):
            state["step"] = event.step
            console.print(f"\n[dim]── step {event.step} ──[/dim]")
        if event.kind == "text":
            console.print(escape(event.data["text"]), end="")
        elif event.kind == "call":
            call = event.data["call"]
            if call.error:
                console.print(f"\n[red]✗ {escape(call.error)}[/red]")
            else:
                shown = ", ".join(f"{k}={_short(v)}" for k, v in call.arguments.items())
                console.print(f"\n[cyan]→ {call.name}({escape(shown)})[/cyan]")
        elif event.kind == "result":
            result = event.data["result"]
            lines = result.content.splitlines()
            more = (
                f"\n… {len(lines) - RESULT_LINES} more lines" if len(lines) > RESULT_LINES else ""
            )
            style = "red" if result.is_error else "dim"
            text = "\n".join(lines[:RESULT_LINES]) + more
            console.print(f"[{style}]← {result.call.name}: {escape(text)}[/{style}]")
        elif event.kind == "stop" and event.data["reason"] == "max_steps":
            console.print(
                f"\n[yellow]stopped: --max-steps {event.step} reached without an answer[/yellow]"
            )

    return show


async def _run(args: argparse.Namespace, console: Console) -> int:
    from llm_agent.models import LocalChatModel, OpenAIChatModel

    root = Path(args.workspace)
    if not root.is_dir():
        raise AgentError(f"--workspace {root}: no such folder")
    ws = Workspace(
        root,
        allow_commands=args.allow_commands,
        approve=approver(console),
        allowlist=args.allowlist,
        allow_network=args.allow_network,
        unconfined_commands=args.unconfined_commands,
        command_timeout=args.command_timeout,
    )
    transcript = Path(args.transcript) if args.transcript else _default_transcript()
    model: Any
    if args.server:
        model = OpenAIChatModel(args.server, model=args.server_model, api_key=args.api_key)
    else:
        with console.status(f"loading {args.model}…"):
            model = await asyncio.to_thread(LocalChatModel, args.model)
    sampling = {"temperature": args.temperature, "max_tokens": args.max_tokens, "seed": args.seed}
    console.print(f"[dim]workspace: {ws.root}[/dim]")
    console.print(commands_line(ws))
    console.print(f"[dim]transcript: {transcript}[/dim]")
    agent = Agent(
        model,
        ws,
        max_steps=args.max_steps,
        sampling={k: v for k, v in sampling.items() if v is not None},
        transcript=transcript,
        on_event=printer(console),
    )
    try:
        result = await agent.run(args.task)
    finally:
        agent.close()
        await model.aclose()
    if result.stop_reason == "answer":
        console.print()
        return 0
    return 3


def _default_transcript() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path.home() / ".local" / "state" / "llm-agent" / f"{stamp}.jsonl"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…'"


if __name__ == "__main__":
    sys.exit(main())
