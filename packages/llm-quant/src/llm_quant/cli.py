"""The `llm-quant` console script: ``inspect`` and ``validate`` GGUF files."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from llm_quant import __version__
from llm_quant.gguf import GGUFError, GGUFFile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-quant",
        description="Quantization for llm: INT8 and Q4 schemes, quantized modules, GGUF reading.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser(
        "inspect", help="a GGUF file's metadata and tensors (long arrays abbreviated)"
    )
    inspect.add_argument("file", help="a .gguf file")
    inspect.add_argument("--tensors", action="store_true", help="list every tensor")
    inspect.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    validate = sub.add_parser(
        "validate",
        help="our next-token logits and greedy tokens against llama.cpp's on a GGUF file",
    )
    validate.add_argument("file", help="a .gguf file (llama or qwen2)")
    validate.add_argument("--prompt", default=None, help="the prompt (default: a fixed one)")
    validate.add_argument("--max-tokens", type=int, default=16, help="greedy tokens compared")
    validate.add_argument("--threads", type=int, default=None, help="llama.cpp's CPU threads")
    validate.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    return parser


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from llm_quant.gguf_tools import describe

    info = describe(GGUFFile(args.file))
    if not args.tensors:
        info = {k: v for k, v in info.items() if k != "tensors"}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = Table(title=f"{info['path']} (GGUF v{info['version']}, {info['file_bytes']:,} bytes)")
    meta.add_column("key")
    meta.add_column("value", overflow="fold")
    for key, value in info["metadata"].items():
        if isinstance(value, dict) and "length" in value:
            value = f"[{value['length']} items] {value['first']} ..."
        meta.add_row(key, str(value))
    console.print(meta)
    if "tensors" in info:
        table = Table(title=f"{info['tensor_count']} tensors, {info['tensor_bytes']:,} bytes")
        for column in ("name", "type", "shape", "bytes"):
            table.add_column(column, justify="right" if column == "bytes" else "left")
        for t in info["tensors"]:
            table.add_row(t["name"], t["type"], str(tuple(t["shape"])), f"{t['bytes']:,}")
        console.print(table)
    else:
        console.print(
            f"{info['tensor_count']} tensors, {info['tensor_bytes']:,} bytes (--tensors lists them)"
        )
    return 0


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from llm_quant.gguf_tools import DEFAULT_PROMPT, validate

    result = validate(
        args.file, args.prompt or DEFAULT_PROMPT, max_tokens=args.max_tokens, threads=args.threads
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        n = len(result.cpp_tokens)
        verdict = "agree" if result.next_token_matches else "DISAGREE"
        console.print(f"prompt: {len(result.prompt_ids)} tokens (tokenized by llama.cpp)")
        console.print(
            f"next token: ours {result.ours_next}, llama.cpp {result.cpp_next} ({verdict}); "
            f"worst logit difference {result.max_abs_diff:.4g} "
            f"({result.max_rel_diff:.3%} of the largest logit)"
        )
        console.print(f"greedy tokens: {result.agree} of {n} agree")
        console.print(f"ours:      {result.ours_text!r}", markup=False)
        console.print(f"llama.cpp: {result.cpp_text!r}", markup=False)
    return 0 if result.next_token_matches else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    commands = {"inspect": cmd_inspect, "validate": cmd_validate}
    try:
        return commands[args.command](args, console)
    except (GGUFError, ImportError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"llm-quant: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
