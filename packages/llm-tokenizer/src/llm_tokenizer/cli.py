"""`llm-tokenizer`: train, encode, decode and inspect tokenizers from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version as _version
from pathlib import Path

from llm_tokenizer.patterns import PATTERNS, pattern_name
from llm_tokenizer.tokenizer import Tokenizer


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    if args.file is not None:
        return Path(args.file).read_text(encoding="utf-8")
    return sys.stdin.read()


def _train(args: argparse.Namespace) -> None:
    eos_token = args.eos
    if eos_token is None and "<|endoftext|>" in args.special:
        eos_token = "<|endoftext|>"
    tokenizer = Tokenizer.train(
        [Path(f) for f in args.files],
        args.vocab_size,
        pattern=args.pattern,
        special_tokens=args.special,
        min_frequency=args.min_frequency,
        eos_token=eos_token,
        show_progress=not args.quiet,
    )
    tokenizer.save(args.out, format=args.format)
    print(f"wrote {args.out}: {tokenizer.vocab_size} tokens, {len(tokenizer.merges)} merges")


def _encode(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.from_file(args.tokenizer)
    ids = tokenizer.encode(_read_text(args), allowed_special="all" if args.special else ())
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))


def _decode(args: argparse.Namespace) -> None:
    tokenizer = Tokenizer.from_file(args.tokenizer)
    sys.stdout.write(tokenizer.decode(args.ids, skip_special_tokens=args.skip_special) + "\n")


def _info(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    tokenizer = Tokenizer.from_file(args.tokenizer)
    table = Table(title=str(args.tokenizer), show_header=False)
    if tokenizer.kind != "byte_level":
        pattern = "- (SentencePiece: spaces become ▁)"
    elif tokenizer.pattern is None:
        pattern = "none"
    elif isinstance(tokenizer.pattern, str):
        pattern = pattern_name(tokenizer.pattern) or tokenizer.pattern
    else:  # a sequence of Split steps
        pattern = " then ".join(
            f"{pattern_name(step.pattern) or step.pattern} ({step.behavior}"
            + (", inverted)" if step.invert else ")")
            for step in tokenizer.pattern
        )
    if tokenizer.missing_bytes:
        pattern += f"; no token for bytes {tokenizer.missing_bytes.hex(' ')}"
    specials = list(tokenizer.special_tokens)
    rows = {
        "kind": tokenizer.kind,
        "vocab size": tokenizer.vocab_size,
        "merges": len(tokenizer.merges),
        "pattern": pattern,
        "special tokens": f"{len(specials)}: "
        + ", ".join(specials[:8])
        + (", ..." if len(specials) > 8 else ""),
        "bos / eos": f"{tokenizer.bos_token} / {tokenizer.eos_token} (eos ids {list(tokenizer.eos_token_ids)})",
        "chat template": "yes" if tokenizer.chat_template else "no (ChatML default)",
    }
    for name, value in rows.items():
        table.add_row(name, str(value))
    Console().print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-tokenizer", description="Train, run and inspect BPE tokenizers."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version('llm-tokenizer')}"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    train.add_argument("files", nargs="+", help="UTF-8 text files")
    train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="ids in all: 256 bytes + merges + special tokens",
    )
    train.add_argument("--out", required=True, help="where to write the tokenizer")
    train.add_argument(
        "--pattern", default="gpt4", help=f"pre-tokenizer: one of {', '.join(PATTERNS)}, or a regex"
    )
    train.add_argument(
        "--special", nargs="*", default=[], help="special tokens, e.g. '<|endoftext|>'"
    )
    train.add_argument(
        "--eos", help="the special token that ends a document (default: <|endoftext|> if given)"
    )
    train.add_argument(
        "--min-frequency", type=int, default=2, help="stop when the best pair is rarer (default 2)"
    )
    train.add_argument(
        "--format",
        choices=["llm", "hf"],
        default="llm",
        help="our JSON (default) or HF tokenizer.json",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    encode = commands.add_parser(
        "encode", help="print the token ids of text (argument, --file, or stdin)"
    )
    encode.add_argument(
        "--tokenizer", "-t", required=True, help="our JSON, an HF tokenizer.json, or its directory"
    )
    encode.add_argument("text", nargs="?", help="text to encode (default: stdin)")
    encode.add_argument("--file", help="read the text from this file")
    encode.add_argument(
        "--special",
        action="store_true",
        help="encode special token text as special tokens (default: as plain text)",
    )
    encode.add_argument("--json", action="store_true", help="print a JSON list")
    encode.set_defaults(run=_encode)

    decode = commands.add_parser("decode", help="print the text of token ids")
    decode.add_argument(
        "--tokenizer", "-t", required=True, help="our JSON, an HF tokenizer.json, or its directory"
    )
    decode.add_argument("ids", nargs="+", type=int, help="token ids")
    decode.add_argument("--skip-special", action="store_true", help="leave special tokens out")
    decode.set_defaults(run=_decode)

    info = commands.add_parser("info", help="describe a tokenizer file")
    info.add_argument("tokenizer", help="our JSON, an HF tokenizer.json, or its directory")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (1 on bad input, with a one-line error on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if args.debug:
            raise
        print(f"llm-tokenizer: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
