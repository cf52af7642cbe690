"""The `llm-train` console script."""

from __future__ import annotations

import argparse
import sys

from llm_train import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-train",
        description="Training for llm: data preparation, loader, training loop, resume, distributed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(f"llm-train {__version__}: no commands yet; see --help.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
