"""The ``llm-infer`` console script: ``generate`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from llm_core import LLMCoreError
from llm_tokenizer import TokenizerError
from rich.console import Console
from rich.table import Table

from llm_infer import __version__, show_kernel_notices
from llm_infer.errors import InferError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-infer",
        description="Inference for llm: load a model, generate text, measure throughput.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate a completion of a prompt")
    _model_args(gen)
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument(
        "--chat",
        action="store_true",
        help="send the prompt as a user message through the chat template",
    )
    gen.add_argument(
        "--max-tokens", type=int, default=128, help="most tokens to generate (default 128)"
    )
    gen.add_argument("--temperature", type=float, default=1.0, help="0 for greedy (default 1.0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus filter (default 1: off)")
    gen.add_argument(
        "--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: off)"
    )
    gen.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    gen.add_argument("--stream", action="store_true", help="print the text as it is generated")

    bench = commands.add_parser(
        "bench", help="prefill/decode tokens/s, time to first token, aggregate throughput"
    )
    _model_args(bench)
    bench.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default 32)")
    bench.add_argument(
        "--new-tokens", type=int, default=128, help="greedy tokens per request (default 128)"
    )
    bench.add_argument(
        "--concurrency", default="1,8", help="engine concurrencies, comma-separated (default 1,8)"
    )
    bench.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint or HF model directory")
    parser.add_argument("--device", default=None, help="torch device (default cpu)")
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode through torch.compile: faster steps after a one-off compilation "
        "(default: for models of 20M parameters and more)",
    )


def _concurrency(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--concurrency must be integers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise ValueError(f"--concurrency must be integers >= 1, got {text!r}")
    return values


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    from llm_infer.load import load

    llm = load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    params = dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    prompt = (
        llm.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    )
    if args.stream:
        for delta in llm.stream(prompt, **params):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    completion = llm.generate(prompt, **params)
    print(completion.text)
    usage = completion.usage
    console.print(
        f"[dim]{usage.prompt_tokens} prompt + {usage.completion_tokens} generated tokens, "
        f"finish: {completion.finish_reason}[/dim]"
    )
    return 0


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    import torch

    from llm_infer.bench import ServedEngine, measure_single, peak_rss_mb
    from llm_infer.load import load

    levels = _concurrency(args.concurrency)
    if args.prompt_len < 1 or args.new_tokens < 2:
        raise ValueError("--prompt-len must be >= 1 and --new-tokens >= 2")
    llm = load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    if llm.step.compiled is not None:
        measure_single(llm, args.prompt_len, args.new_tokens)  # compiles; not measured
    single = measure_single(llm, args.prompt_len, args.new_tokens)
    single.pop("token_ids")
    # one engine for every level, as llm-serve runs it (started once, not per measurement)
    with ServedEngine(llm, max_batch=max(levels)) as served:
        engine = [served.measure(args.prompt_len, args.new_tokens, c) for c in levels]
    result = {
        "model": args.model,
        "compile": llm.step.compiled is not None,
        "threads": torch.get_num_threads(),
        "single": single,
        "engine": engine,
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(
        title=f"llm-infer bench: {args.model} ({args.prompt_len}-token prompt, {args.new_tokens} new tokens)"
    )
    for col in ("path", "prefill tok/s", "decode tok/s", "TTFT ms", "aggregate tok/s"):
        table.add_column(col, justify="right")
    table.add_row(
        "LLM.generate",
        f"{single['prefill_tokens_per_s']:.0f}",
        f"{single['decode_tokens_per_s']:.1f}",
        f"{single['time_to_first_token_s'] * 1e3:.0f}",
        f"{single['tokens_per_s']:.1f}",
    )
    for row in engine:
        table.add_row(
            f"Engine x{row['concurrency']}",
            "",
            f"{row['per_stream_tokens_per_s']:.1f}",
            f"{row['mean_time_to_first_token_s'] * 1e3:.0f}",
            f"{row['aggregate_tokens_per_s']:.1f}",
        )
    console.print(table)
    console.print(f"peak RSS {result['peak_rss_mb']:.0f} MiB, {result['threads']} threads")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_kernel_notices()  # a first load on this machine compiles the native kernels
    console = Console(stderr=args.command == "generate")
    try:
        return {"generate": cmd_generate, "bench": cmd_bench}[args.command](args, console)
    except (InferError, LLMCoreError, TokenizerError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"llm-infer: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
