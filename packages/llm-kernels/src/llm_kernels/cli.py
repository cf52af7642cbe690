"""The `llm-kernels` console script: which implementation each op dispatches to here
(``info``), every Triton kernel against its reference (``check``), and their speed
(``bench``)."""

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
    check = sub.add_parser(
        "check",
        help="every Triton kernel against its torch reference: worst absolute and relative "
        "error per op and dtype (CPU: under Triton's interpreter, small shapes)",
    )
    check.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    check.add_argument(
        "--compile-only", metavar="ARCH", type=int, nargs="?", const=90,
        help="instead, compile every kernel launch for CUDA sm_ARCH (default 90) with "
        "triton's own compiler; needs no GPU",
    )  # fmt: skip
    check.add_argument(
        "--dtype", action="append", choices=("float32", "float16", "bfloat16"),
        help="dtypes to check (repeatable; default all three)",
    )  # fmt: skip
    bench = sub.add_parser(
        "bench",
        help="each op's time, TFLOP/s or GB/s, and the ratio to its torch baseline "
        "(CUDA: the Triton kernels; CPU: the quantized GEMV paths vs float32 F.linear)",
    )
    bench.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    bench.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    for p in (check, bench):
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device here")
    return choice


def _compile_check(arch: int) -> int:
    from llm_kernels.check import compile_checks

    print(f"llm-kernels check: compiling every kernel launch for sm_{arch}")
    results = compile_checks(arch)
    for name, meta, outcome in results:
        shown = " ".join(f"{k}={v}" for k, v in meta.items())
        print(f"{'ok  ' if outcome == 'ok' else 'FAIL'} {name} {shown}")
        if outcome != "ok":
            print(f"     {outcome}")
    failed = sum(outcome != "ok" for _, _, outcome in results)
    if failed:
        print(f"error: {failed} of {len(results)} launches fail to compile", file=sys.stderr)
        return 1
    print(f"all {len(results)} launches compile for sm_{arch}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from llm_kernels.check import run_checks

    if args.compile_only is not None:
        return _compile_check(args.compile_only)
    device = _device(args.device)
    where = "compiled" if device == "cuda" else "Triton interpreter"
    print(f"llm-kernels check on {device} ({where})")
    results = run_checks(device, args.dtype or ["float32", "float16", "bfloat16"])
    print(f"{'op':<26} {'dtype':<9} {'max abs err':>12} {'max rel err':>12} {'tol':>8}")
    for r in results:
        verdict = "ok" if r.ok else "FAIL"
        print(
            f"{r.op:<26} {r.dtype:<9} {r.max_abs:>12.3e} {r.max_rel:>12.3e} {r.tolerance:>8.0e}"
            f"  {verdict}"
        )
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"error: {len(failed)} of {len(results)} checks beyond tolerance", file=sys.stderr)
        return 1
    print(f"all {len(results)} checks within tolerance")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from llm_kernels.bench import cpu_benches, format_table, gpu_benches

    device = _device(args.device)
    rows = gpu_benches(args.quick) if device == "cuda" else cpu_benches(args.quick)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"llm-kernels bench on {name}")
    print(format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("check", "bench"):
        try:
            return _check(args) if args.command == "check" else _bench(args)
        except (RuntimeError, ValueError) as e:
            if args.debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command in (None, "info"):
        cuda = torch.cuda.is_available()
        print(f"llm-kernels {__version__}, torch {torch.__version__}")
        print(f"CUDA: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
        print(f"TRITON_INTERPRET: {os.environ.get('TRITON_INTERPRET', '0')}")
        triton_runs = cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"
        for op in OPS:
            print(f"  {op}: {'Triton kernel' if triton_runs else 'torch reference'}")
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
