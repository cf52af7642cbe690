"""The ``llm-core`` console script: ``info``, ``estimate`` and ``init``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llm_core import __version__
from llm_core.config import ModelConfig
from llm_core.errors import CheckpointError, LLMCoreError

DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "fp32": "float32",
    "f32": "float32",
}


def parse_count(text: str) -> int:
    """``'32768'``, ``'32K'``, ``'1M'`` (binary: K = 1024) -> int."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r} (e.g. 4096, 32K, 1M)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    value = int(m.group(1)) * scale
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def parse_counts(text: str) -> list[int]:
    return [parse_count(part) for part in text.split(",")]


def parse_dtype(text: str) -> str:
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in ("float32", "bfloat16", "float16"):
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (bf16, fp16 or fp32)")
    return name


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-core", description="Inspect checkpoints and estimate the memory of models."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="config, parameter count, dtype and size of a checkpoint")
    info.add_argument(
        "path", type=Path, help="checkpoint directory (ours or an HF model directory)"
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")

    est = sub.add_parser("estimate", help="weight, KV cache and activation bytes for a context")
    est.add_argument(
        "--config", type=Path, required=True, help="model config (.yaml, .json, .toml)"
    )
    est.add_argument(
        "--context",
        type=parse_counts,
        default=parse_counts("32K,128K,512K,1M"),
        help="tokens, e.g. 4096 or 32K,128K,1M (default 32K,128K,512K,1M)",
    )
    est.add_argument(
        "--window",
        type=parse_count,
        help="sliding window of the sink-cache column (default: the config's)",
    )
    est.add_argument(
        "--sinks", type=int, help="sink tokens of the sink-cache column (default: the config's)"
    )
    est.add_argument("--batch", type=parse_count, default=1, help="sequences (default 1)")
    est.add_argument(
        "--dtype", type=parse_dtype, default="bfloat16", help="bf16 (default), fp16 or fp32"
    )
    est.add_argument("--json", action="store_true", help="print JSON lines")

    init = sub.add_parser("init", help="write a randomly initialised checkpoint for a config")
    init.add_argument(
        "--config", type=Path, required=True, help="model config (.yaml, .json, .toml)"
    )
    init.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    init.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    from llm_core.describe import describe_checkpoint

    info = describe_checkpoint(args.path)
    if args.json:
        print(json.dumps(info))
        return 0
    table = Table(title=str(args.path), show_header=False)
    table.add_row("kind", info["kind"])
    table.add_row("parameters", f"{info['parameters']:,}")
    table.add_row("dtype", ", ".join(info["dtypes"]))
    table.add_row("bytes", f"{info['bytes']:,} ({human_bytes(info['bytes'])})")
    table.add_row("tokenizer", "yes" if info["tokenizer"] else "no")
    for key, value in info["config"].items():
        table.add_row(key, str(value))
    console.print(table)
    return 0


def cmd_estimate(args: argparse.Namespace, console: Console) -> int:
    from llm_core.estimate import estimate_memory

    config = ModelConfig.from_file(args.config)
    if args.window is not None or args.sinks is not None:
        window = args.window or config.window_size
        if window is None:
            raise ValueError(
                "--sinks needs a window: pass --window or use a config with window_size"
            )
        sinks = config.sink_tokens if args.sinks is None else args.sinks
        config = ModelConfig.from_dict(
            {**config.to_dict(), "window_size": window, "sink_tokens": sinks}
        )
    rows = [estimate_memory(config, n, args.batch, args.dtype) for n in args.context]
    if args.json:
        for r in rows:
            print(json.dumps({**r.__dict__, "total": r.total, "dtype": args.dtype}))
        return 0
    sink = config.window_size is not None
    title = f"{args.config.name}: batch {args.batch}, {args.dtype}"
    if sink:
        title += f", sink cache = {config.sink_tokens} sinks + window {config.window_size}"
    table = Table(title=title)
    columns = ["context", "weights", "KV cache (static)", *(["KV cache (sink)"] if sink else [])]
    for col in [*columns, "activations", "total (static)"]:
        table.add_column(col, justify="right")
    for r in rows:
        cells = [f"{r.context:,}", human_bytes(r.weights), human_bytes(r.kv_cache)]
        if r.kv_cache_sink is not None:
            cells.append(human_bytes(r.kv_cache_sink))
        table.add_row(*cells, human_bytes(r.activations), human_bytes(r.total))
    console.print(table)
    if sink:
        console.print(
            "[dim]activations are those of one forward over the whole context; chunked prefill "
            "into the sink cache needs only one chunk's worth.[/dim]"
        )
    return 0


def cmd_init(args: argparse.Namespace, console: Console) -> int:
    import torch

    from llm_core.checkpoint import save_model
    from llm_core.model import Transformer

    config = ModelConfig.from_file(args.config)
    torch.manual_seed(args.seed)
    model = Transformer(config)
    save_model(model, args.out)
    console.print(f"wrote {args.out} ({model.num_parameters():,} parameters)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    commands = {"info": cmd_info, "estimate": cmd_estimate, "init": cmd_init}
    try:
        return commands[args.command](args, console)
    except (LLMCoreError, CheckpointError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"llm-core: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
