"""The `llm-quant` console script: ``inspect`` and ``validate`` GGUF files, ``quantize`` a float
checkpoint, ``report`` what a scheme costs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from llm_core import CheckpointError, LLMCoreError, Transformer, load_model, save_model
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from llm_quant import __version__
from llm_quant.gguf import HEAD_ACTIVATIONS, HEAD_CHOICES, GGUFError, GGUFFile, load_gguf_model
from llm_quant.quantize import quantizable_linears, quantize_model
from llm_quant.report import QuantReport, report
from llm_quant.schemes import Scheme


def _scheme(args: argparse.Namespace, name: str) -> Scheme:
    return Scheme(
        name,
        group_size=args.group_size,
        zero_points=args.zero_points,
        activations=args.activations,
    )


def _load_float(src: str) -> Transformer:
    """A float model from a checkpoint / HF directory or a GGUF file (dequantized)."""
    path = Path(src)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ValueError(f"{path}: no such GGUF file")
        model, _ = load_gguf_model(path, quantized=False)
        return model
    model = load_model(path)
    if getattr(model, "quantization", None):
        raise ValueError(f"{path}: already quantized ({model.quantization['scheme']['name']})")
    return model


def _held_out_tokens(args: argparse.Namespace, model: Transformer) -> torch.Tensor:
    """``[B, T]`` token ids: the text of ``--text`` through the tokenizer beside the model (a
    GGUF file's own, or ``--tokenizer``), in rows of ``--length``; without ``--text``, seeded random ids (good for
    the logit error only)."""
    length = args.length
    if args.text is None:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, model.config.vocab_size, (args.rows, length), generator=gen)
    from llm_tokenizer import Tokenizer

    tokenizer_path = Path(args.tokenizer or args.src)
    if tokenizer_path.suffix.lower() == ".gguf" and tokenizer_path.is_file():
        from llm_quant.gguf import GGUFFile

        tokenizer = Tokenizer.from_gguf(GGUFFile(tokenizer_path).metadata)  # the file's own
    elif tokenizer_path.is_file() or (tokenizer_path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(tokenizer_path)
    else:
        raise ValueError(f"{tokenizer_path}: no tokenizer.json (pass --tokenizer DIR)")
    ids = tokenizer.encode(Path(args.text).read_text(encoding="utf-8"))
    rows = min(args.rows, len(ids) // length)
    if rows == 0:
        raise ValueError(f"{args.text}: {len(ids)} tokens, fewer than one row of {length}")
    return torch.tensor(ids[: rows * length]).reshape(rows, length)


def cmd_quantize(args: argparse.Namespace, console: Console) -> int:
    scheme = _scheme(args, args.scheme)
    model = _load_float(args.src)
    original = {
        n: m.weight.detach().clone()
        for n, m in model.named_modules()
        if n in set(quantizable_linears(model, args.skip))
    }
    names = list(original)
    before = sum(4 * w.numel() for w in original.values())
    with Progress(
        TextColumn("[bold]quantizing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=len(names))
        quantize_model(
            model,
            scheme,
            skip=args.skip,
            progress=lambda name: progress.update(task, advance=1, description=name),
        )
    modules = dict(model.named_modules())
    errors = {
        n: ((modules[n].dequantize() - w.float()).norm() / w.float().norm()).item()
        for n, w in original.items()
    }
    after = sum(modules[n].weight_bytes() for n in names)
    src = Path(args.src)
    tokenizer = (
        src / "tokenizer.json" if src.is_dir() and (src / "tokenizer.json").is_file() else None
    )
    save_model(model, args.out, tokenizer_json=tokenizer)
    worst = max(errors, key=errors.get) if errors else None
    console.print(f"{scheme.describe()}: {len(names)} linear layers quantized")
    console.print(
        f"linear weights: {before / 2**20:.1f} MiB (fp32) -> {after / 2**20:.1f} MiB ({before / max(after, 1):.2f}x)"
    )
    if worst is not None:
        mean = sum(errors.values()) / len(errors)
        console.print(
            f"relative weight error: mean {mean:.4f}, worst {errors[worst]:.4f} ({worst})"
        )
    if tokenizer is None:
        console.print("[yellow]no tokenizer.json beside the source: the output has none[/]")
    console.print(f"wrote {args.out}")
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    model = _load_float(args.src)
    tokens = _held_out_tokens(args, model)
    names = args.schemes or ["int8", "q4"]
    results: list[QuantReport] = []
    for name in names:
        with console.status(f"quantizing with {name} and scoring {tokens.numel()} tokens"):
            results.append(report(model, _scheme(args, name), tokens))
    table = Table(
        title=f"{args.src}: {tokens.shape[0]} x {tokens.shape[1]} held-out tokens"
        + ("" if args.text else " (random ids: perplexities are not meaningful)")
    )
    for col in (
        "scheme",
        "compression",
        "weight error (mean / worst)",
        "logit error",
        "perplexity",
        "change",
    ):
        table.add_column(col)
    for r in results:
        errs = list(r.layer_errors.values())
        table.add_row(
            r.scheme.describe(),
            f"{r.compression:.2f}x",
            f"{sum(errs) / len(errs):.4f} / {max(errs):.4f}",
            f"{r.logit_error:.4f}",
            f"{r.perplexity:.3f} -> {r.perplexity_quantized:.3f}",
            f"{(r.perplexity_quantized / r.perplexity - 1) * 100:+.2f}%",
        )
    console.print(table)
    if args.layers:
        for r in results:
            layers = Table(title=f"{r.scheme.describe()}: relative weight error per layer")
            layers.add_column("layer")
            layers.add_column("error")
            for n, e in r.layer_errors.items():
                layers.add_row(n, f"{e:.5f}")
            console.print(layers)
    return 0


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
        args.file,
        args.prompt or DEFAULT_PROMPT,
        max_tokens=args.max_tokens,
        threads=args.threads,
        head_activations=args.head_activations,
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
        where = ""
        if result.tie_margin is not None:
            where = (
                f"; at the first difference llama.cpp's token led ours by {result.tie_margin:.3%}"
                " of its largest logit" + (" (a near-tie)" if result.tie_margin < 0.01 else "")
            )
        console.print(f"greedy tokens: {result.agree} of {n} agree{where}")
        console.print(f"ours:      {result.ours_text!r}", markup=False)
        console.print(f"llama.cpp: {result.cpp_text!r}", markup=False)
    return 0 if result.next_token_matches else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-quant",
        description="Quantization for llm: GGUF files, INT8 and Q4 schemes, quantized checkpoints.",
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
    inspect.set_defaults(func=cmd_inspect)
    validate = sub.add_parser(
        "validate",
        help="our next-token logits and greedy tokens against llama.cpp's on a GGUF file",
    )
    validate.add_argument("file", help="a .gguf file (llama or qwen2)")
    validate.add_argument("--prompt", default=None, help="the prompt (default: a fixed one)")
    validate.add_argument("--max-tokens", type=int, default=16, help="greedy tokens compared")
    validate.add_argument("--threads", type=int, default=None, help="llama.cpp's CPU threads")
    validate.add_argument(
        "--head-activations",
        choices=HEAD_CHOICES,
        default=HEAD_ACTIVATIONS,
        help=f"our LM head's input: float (exact), int16 (within ~1e-5) or int8 (llama.cpp's "
        f"arithmetic); default {HEAD_ACTIVATIONS}, as models load",
    )
    validate.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    validate.set_defaults(func=cmd_validate)

    def scheme_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--group-size", type=int, default=64, help="q4 group size: 32, 64 or 128 (default 64)"
        )
        p.add_argument(
            "--zero-points", action="store_true", help="q4 with zero points (default symmetric)"
        )
        p.add_argument(
            "--activations",
            choices=("float", "int8", "dynamic"),
            help="activations in the product: float (weight-only), int8 per block of 32, dynamic (W8A8 per token); default float for int8, int8 for q4",
        )
        p.add_argument(
            "--skip", nargs="*", default=["lm_head"], help="layers left in float (default: lm_head)"
        )

    q = sub.add_parser(
        "quantize",
        help="quantize a float checkpoint (directory or GGUF) into a checkpoint directory",
    )
    q.add_argument("src", help="checkpoint or HF directory, or a .gguf file (dequantized first)")
    q.add_argument("--scheme", choices=("int8", "q4"), required=True)
    q.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    scheme_options(q)
    q.set_defaults(func=cmd_quantize)

    r = sub.add_parser(
        "report", help="each layer's weight error, the logit error and the perplexity change"
    )
    r.add_argument("src", help="checkpoint or HF directory, or a .gguf file (dequantized first)")
    r.add_argument(
        "--scheme",
        dest="schemes",
        action="append",
        choices=("int8", "q4"),
        help="repeatable; default int8 and q4",
    )
    r.add_argument(
        "--text", help="held-out text file for the perplexity (else random ids: logit error only)"
    )
    r.add_argument("--tokenizer", help="tokenizer.json or its directory (default: beside SRC)")
    r.add_argument("--rows", type=int, default=8, help="rows of held-out tokens (default 8)")
    r.add_argument("--length", type=int, default=128, help="tokens per row (default 128)")
    r.add_argument("--layers", action="store_true", help="also print every layer's weight error")
    scheme_options(r)
    r.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return args.func(args, console)
    except (LLMCoreError, CheckpointError, GGUFError, ImportError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"llm-quant: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
