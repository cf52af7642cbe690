"""The ``llm-rag`` console script: ``index``, ``query`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from llm_rag import __version__
from llm_rag.chunking import Chunker
from llm_rag.embedders import DEFAULT_SPEC, load_embedder
from llm_rag.errors import RagError
from llm_rag.index import make_index
from llm_rag.loading import find_files
from llm_rag.retriever import MODES, Retriever, cite, source_lines

LARGE_FILE = 10_000_000  # bytes: files from this size up are announced as streamed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-rag",
        description="Retrieval for llm: index documents, find passages, answer with citations.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    index = commands.add_parser("index", help="index files, folders or globs into DIR")
    index.add_argument(
        "paths", nargs="+", metavar="PATH", help="files, folders or globs ('**' recursive)"
    )
    index.add_argument("--out", required=True, type=Path, help="the index directory to write")
    index.add_argument("--chunk-size", type=int, default=400, help="chunk size (default 400)")
    index.add_argument(
        "--overlap", type=int, default=50, help="overlap between chunks (default 50)"
    )
    index.add_argument(
        "--tokenizer",
        default=None,
        help="count --chunk-size/--overlap in tokens of this tokenizer.json (file or its folder); "
        "default: characters",
    )
    index.add_argument(
        "--embedder",
        default=DEFAULT_SPEC,
        help=f"'hash[:DIM]' or 'core:MODEL' (mean-pooled llm-core model; default {DEFAULT_SPEC})",
    )
    index.add_argument("--index", default="HNSW32", help="'Flat' or 'HNSW<M>' (default HNSW32)")
    index.add_argument(
        "--ef-construction", type=int, default=200, help="HNSW build effort (default 200)"
    )
    index.add_argument("--ef", type=int, default=64, help="HNSW search effort (default 64)")

    query = commands.add_parser("query", help="the passages of DIR that best answer a question")
    query.add_argument("dir", type=Path, metavar="DIR", help="an index written by `llm-rag index`")
    query.add_argument("question")
    query.add_argument("-k", type=int, default=5, help="passages to return (default 5)")
    query.add_argument("--mode", choices=MODES, default="hybrid", help="ranking (default hybrid)")
    query.add_argument(
        "--answer", action="store_true", help="answer from the passages with --model"
    )
    query.add_argument(
        "--model", default=None, help="model for --answer: checkpoint/HF dir or 'demo'"
    )
    query.add_argument("--max-tokens", type=int, default=256, help="answer length (default 256)")
    query.add_argument("--json", action="store_true", help="print JSON instead of text")

    info = commands.add_parser("info", help="what an index holds")
    info.add_argument("dir", type=Path, metavar="DIR")
    return parser


def _tokenizer(source: str):
    try:
        from llm_tokenizer import Tokenizer, TokenizerError
    except ImportError:
        raise RagError("--tokenizer needs llm-tokenizer: pip install 'llm-rag[tokens]'") from None
    try:
        return Tokenizer.from_file(source)
    except (TokenizerError, OSError) as exc:
        raise RagError(f"{source}: {exc}") from None


def cmd_index(args: argparse.Namespace, console: Console) -> int:
    tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
    chunker = Chunker(args.chunk_size, args.overlap, tokenizer=tokenizer)
    files = find_files(args.paths)  # fails early, before a model loads, on a missing path
    if not files:
        raise RagError(f"nothing to index in {', '.join(args.paths)}: no files found")
    embedder = load_embedder(args.embedder)
    options = (
        {}
        if args.index.lower().startswith("flat")
        else {"ef_construction": args.ef_construction, "ef": args.ef}
    )
    retriever = Retriever(
        embedder, make_index(args.index, embedder.dim, **options), chunker=chunker
    )
    total = sum(f.stat().st_size for f in files)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("indexing", total=total)

        def on_file(path: Path, size: int) -> None:
            progress.update(task, description=escape(path.name))
            if size >= LARGE_FILE:
                console.print(f"{escape(str(path))}: {size / 1e6:.1f} MB, streamed in blocks")

        report = retriever.add_files(
            args.paths, progress=lambda _path, n: progress.advance(task, n), on_file=on_file
        )
    retriever.save(args.out)
    console.print(f"indexed {report.summary()} into {escape(str(args.out))}")
    for reason, paths in report.skipped.items():
        for path in paths:
            console.print(f"  skipped ({reason}): {escape(path)}", style="dim")
    return 0


def cmd_query(args: argparse.Namespace, console: Console) -> int:
    if args.answer and not args.model:
        raise RagError("--answer needs --model (a checkpoint or HF directory, or 'demo')")
    retriever = Retriever.load(args.dir)
    hits = retriever.query(args.question, args.k, mode=args.mode)
    text = None
    if args.answer:
        from llm_rag.answer import answer, load_model

        text, hits = answer(load_model(args.model), args.question, hits, max_tokens=args.max_tokens)
    if args.json:
        out = {
            "question": args.question,
            "answer": text,
            "passages": [
                {"n": n, "id": h.id, "score": h.score, **h.chunk.to_json()}
                for n, h in enumerate(hits, 1)
            ],
        }
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    if text is not None:
        console.print(escape(text.strip()))
        console.print()
        console.print(escape("\n".join(source_lines(text, hits))), highlight=False)
        return 0
    for n, hit in enumerate(hits, 1):
        console.print(f"[bold]{escape(cite(n, hit.chunk))}[/bold]  score {hit.score:.4f}")
        console.print(escape(hit.chunk.text), highlight=False)
        console.print()
    return 0


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    info = Retriever.load(args.dir).info()
    width = max(map(len, info))
    for key, value in info.items():
        console.print(f"{key:<{width}}  {escape(str(value))}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(soft_wrap=True)
    try:
        return {"index": cmd_index, "query": cmd_query, "info": cmd_info}[args.command](
            args, console
        )
    except (RagError, ValueError, KeyError, OSError) as exc:
        if args.debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"llm-rag: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
