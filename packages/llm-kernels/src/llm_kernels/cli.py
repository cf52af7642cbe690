"""The `llm-kernels` console script: which implementation each op dispatches to here."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from llm_kernels import __version__, native

OPS = ("apply_rope", "rms_norm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-kernels", description="Tensor ops for llm: show what runs on this machine."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="torch version, devices and the implementation of each op")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "info"):
        cuda = torch.cuda.is_available()
        print(f"llm-kernels {__version__}, torch {torch.__version__}")
        print(f"CUDA: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
        print(f"TRITON_INTERPRET: {os.environ.get('TRITON_INTERPRET', '0')}")
        for op in OPS:
            print(f"  {op}: torch reference")
        n = native.MAX_ROWS
        if native.available():
            rows = f"native kernel (float32, CPU, up to {n} rows), else F.linear"
            attend = f"native kernel (float32, CPU, up to {n} queries a row), else torch's SDPA"
        else:
            rows = f"F.linear (native kernel unavailable: {native.error})"
            attend = "torch's SDPA"
        print(f"  linear: {rows}")
        print(f"  attention: {attend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
