"""The `llm-serve` console script."""

from __future__ import annotations

import argparse
import sys

from llm_serve import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-serve", description="OpenAI-compatible HTTP server for llm."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(f"llm-serve {__version__}: no commands yet; see --help.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
