"""The ``llm-train`` console script: ``prepare``, ``pretrain``, ``finetune``, ``eval``,
``long-context``.

Errors print one line and exit with status 1 (a traceback only with ``--debug``). Under
``torchrun`` the same commands run distributed (``llm-train`` on one process, or
``torchrun --nproc-per-node 2 -m llm_train.cli pretrain --config ...``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

from llm_core import LLMCoreError
from llm_tokenizer import Tokenizer, TokenizerError
from rich.console import Console

from llm_train import __version__
from llm_train.errors import TrainError

err = Console(stderr=True, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-train",
        description="Training for llm: data preparation, loader, training loop, resume, distributed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="tokenize text/JSON/JSONL/CSV files into shards")
    p.add_argument("inputs", nargs="+", type=Path, help="input files")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--tokenizer", type=Path, help="a tokenizer.json (ours or HF's) to use")
    p.add_argument("--train-tokenizer", action="store_true", help="train a BPE tokenizer first")
    p.add_argument("--vocab-size", type=int, default=4096, help="with --train-tokenizer")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of tokens for val")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--shard-tokens", type=int, default=1 << 26, help="tokens per shard file")

    for name, help_text in (
        ("pretrain", "train a model from scratch (model: or model_config_file: in the config)"),
        ("finetune", "train from a checkpoint (init_from: in the config, or --init-from)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, required=True, help="run config (YAML)")
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
        p.add_argument("--out-dir", help="override out_dir")
        p.add_argument("--data", help="override data")
        p.add_argument("--max-steps", type=int, help="override max_steps")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "finetune":
            p.add_argument("--init-from", help="override init_from")

    p = sub.add_parser("eval", help="validation loss and perplexity of a checkpoint")
    p.add_argument("checkpoint", type=Path, help="checkpoint directory")
    p.add_argument("--data", type=Path, required=True, help="prepared data directory")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--seq-len", type=int, default=256, help="window length")
    p.add_argument("--windows", type=int, default=64, help="windows to evaluate")

    p = sub.add_parser("long-context", help="perplexity by position: RoPE, NTK, sink cache")
    p.add_argument("checkpoint", type=Path, help="checkpoint directory")
    p.add_argument("--data", type=Path, required=True, help="prepared data directory")
    p.add_argument("--split", default="val", help="split to read streams from (default: val)")
    p.add_argument("--length", type=int, default=4096, help="positions per stream")
    p.add_argument("--streams", type=int, default=2, help="streams to average over")
    p.add_argument("--window", type=int, default=256, help="cache window")
    p.add_argument("--sinks", type=int, default=4, help="sink tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (TrainError, LLMCoreError, TokenizerError, OSError) as exc:
        if args.debug:
            raise
        err.print(f"llm-train: error: {exc}", markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("llm-train: interrupted")
        return 130


def cmd_prepare(args: argparse.Namespace) -> int:
    from llm_train.data import prepare, train_tokenizer

    if args.train_tokenizer == (args.tokenizer is not None):
        raise TrainError("give exactly one of --tokenizer FILE or --train-tokenizer")
    if args.train_tokenizer:
        tokenizer = train_tokenizer(args.inputs, args.vocab_size)
    else:
        tokenizer = Tokenizer.from_file(args.tokenizer)
    result = prepare(
        args.inputs,
        args.out,
        tokenizer,
        val_fraction=args.val_fraction,
        seed=args.seed,
        shard_tokens=args.shard_tokens,
    )
    for line in result.skipped[:20]:
        err.print(f"skipped {line}", markup=False, soft_wrap=True)
    more = len(result.skipped) - 20
    if more > 0:
        err.print(f"... and {more} more skips (all listed in {args.out}/index.json)")
    print(
        f"{args.out}: train {result.tokens['train']} tokens ({result.documents['train']} docs), "
        f"val {result.tokens['val']} tokens ({result.documents['val']} docs), "
        f"{len(result.skipped)} skipped, vocabulary {tokenizer.vocab_size}"
        + (", with loss masks" if result.has_mask else "")
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from llm_train.config import RunConfig
    from llm_train.trainer import Trainer, close_world

    overrides = {"out_dir": args.out_dir, "data": args.data, "max_steps": args.max_steps}
    if args.command == "finetune":
        overrides["init_from"] = args.init_from
    config = RunConfig.from_file(args.config, **overrides)
    if args.command == "finetune" and config.init_from is None:
        raise TrainError(f"{args.config}: finetune needs init_from (or --init-from)")
    try:
        trainer = Trainer(
            config, resume=args.resume, config_dir=args.config.parent, progress=not args.no_progress
        )
        result = trainer.train()
    finally:
        close_world()
    if trainer.world.main:
        val = (
            ""
            if result.val_loss is None
            else f", val loss {result.val_loss:.4f} (ppl {math.exp(result.val_loss):.2f})"
        )
        why = " (early stop)" if result.stopped_early else ""
        print(
            f"step {result.step}{why}: loss {result.loss:.4f}{val}; checkpoint {result.checkpoint}"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from llm_core import load_model

    from llm_train.evaluate import unigram_loss, validation_loss
    from llm_train.loader import BatchLoader, TokenShards

    model = load_model(args.checkpoint)
    shards = TokenShards(args.data, args.split)
    loss = validation_loss(model, BatchLoader(shards, args.seq_len, 1, 0), args.windows, 8)
    unigram = unigram_loss(TokenShards(args.data, "train"), shards, model.config.vocab_size)
    print(
        json.dumps(
            {
                "split": args.split,
                "loss": round(loss, 4),
                "perplexity": round(math.exp(loss), 2),
                "unigram_perplexity": round(math.exp(unigram), 2),
            }
        )
    )
    return 0


def cmd_long_context(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from llm_core import load_model

    from llm_train.evaluate import long_context_table
    from llm_train.loader import TokenShards

    model = load_model(args.checkpoint)
    shards = TokenShards(args.data, args.split)
    tokens = np.concatenate([np.asarray(t, np.int64) for t in shards.tokens])
    need = args.length + 1
    if len(tokens) < need * args.streams:
        raise TrainError(
            f"{args.data}/{args.split}: {len(tokens)} tokens, fewer than {args.streams} streams of {need}"
        )
    streams = [torch.from_numpy(tokens[i * need : (i + 1) * need]) for i in range(args.streams)]
    bounds = [b for b in (256, 512, 1024, 2048, 4096, 8192, 16384) if b < args.length] + [
        args.length
    ]
    table = long_context_table(model, streams, window=args.window, sinks=args.sinks, bounds=bounds)
    edges = [0, *bounds]
    print("| method | " + " | ".join(f"{lo}-{hi}" for lo, hi in itertools.pairwise(edges)) + " |")
    print("|---|" + "---:|" * len(bounds))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return 0


COMMANDS = {
    "prepare": cmd_prepare,
    "pretrain": cmd_train,
    "finetune": cmd_train,
    "eval": cmd_eval,
    "long-context": cmd_long_context,
}


if __name__ == "__main__":
    sys.exit(main())
