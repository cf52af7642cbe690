"""Retrieval benchmark: HNSW recall@10 against exact search, query time and build rate; and the
retrieval quality of dense, BM25 and hybrid ranking on the standard library's docstrings.

    uv run --frozen python benches/rag.py [--n 100000] [--dim 384] [--queries 1000]
        [--M 32] [--ef-construction 200] [--ef 128,256,512,1024,2048] [--threads 1]
        [--no-quality] [--embedder hash:1024|core:demo]

Vectors: standard normal, seed 0 (random vectors are HNSW's hardest case: no clusters).
Ground truth is llm-rag's FlatIndex (exact cosine, checked against numpy in the tests). Build
rate is vectors inserted per second in batches of 10,000 (incremental adds); query time is per
vector, one query at a time, on --threads threads. Prints a table and appends one JSON line to
.bench/rag.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from llm_rag import FlatIndex, HNSWIndex, Retriever, load_embedder
from llm_rag.evaluation import QUESTIONS, hits_at, stdlib_corpus


def recall(want: np.ndarray, got: np.ndarray) -> float:
    k = want.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors indexed")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--M", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument(
        "--ef", default="128,256,512,1024,2048", help="search ef values, comma-separated"
    )
    parser.add_argument("--threads", type=int, default=1, help="hnswlib threads (build and search)")
    parser.add_argument("--no-quality", action="store_true", help="skip the docstring quality run")
    parser.add_argument(
        "--embedder", default="hash:1024", help="dense side of the quality run ('core:demo', ...)"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, args.dim), dtype=np.float32)  # (n, d)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)  # (q, d)

    flat = FlatIndex(args.dim)
    flat.add(vectors)
    start = time.perf_counter()
    want, _ = flat.search(queries, args.k)  # (q, k)
    flat_s = time.perf_counter() - start

    hnsw = HNSWIndex(
        args.dim, M=args.M, ef_construction=args.ef_construction, num_threads=args.threads
    )
    start = time.perf_counter()
    for first in range(0, args.n, 10_000):
        hnsw.add(vectors[first : first + 10_000])
    build_s = time.perf_counter() - start

    print(
        f"{args.n} x {args.dim} random vectors; HNSW M={args.M}, ef_construction="
        f"{args.ef_construction}, {args.threads} thread(s)"
    )
    print(f"build: {build_s:.1f} s, {args.n / build_s:,.0f} vectors/s")
    print(
        f"flat (exact, batched numpy): {flat_s / args.queries * 1e3:.3f} ms/query (batch of {args.queries})"
    )
    print(f"{'ef':>6} {'recall@' + str(args.k):>10} {'ms/query':>10}")
    rows = []
    for ef in [int(e) for e in args.ef.split(",")]:
        hnsw.ef = ef
        got, times = [], []
        for q in queries:
            start = time.perf_counter()
            ids, _ = hnsw.search(q[None, :], args.k)
            times.append(time.perf_counter() - start)
            got.append(ids[0])
        row = {
            "ef": ef,
            "recall": recall(want, np.stack(got)),
            "ms_per_query": 1e3 * float(np.mean(times)),
        }
        rows.append(row)
        print(f"{ef:>6} {row['recall']:>10.4f} {row['ms_per_query']:>10.3f}")

    quality = {}
    if not args.no_quality:
        corpus = stdlib_corpus()
        retriever = Retriever(load_embedder(args.embedder), index_spec="HNSW32")
        retriever.add_texts(list(corpus.values()), list(corpus))
        for mode in ("hybrid", "dense", "bm25"):
            share, _ = hits_at(
                lambda q, k, m=mode: [h.chunk.source for h in retriever.query(q, k, mode=m)]
            )
            quality[mode] = round(share, 4)
        print(
            f"stdlib docstrings ({len(corpus)} documents, {len(QUESTIONS)} questions, dense: "
            f"{args.embedder}), right passage "
            f"in top 3: " + ", ".join(f"{m} {v:.3f}" for m, v in quality.items())
        )

    record = {
        "bench": "rag",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "M": args.M,
        "ef_construction": args.ef_construction,
        "threads": args.threads,
        "build_s": round(build_s, 2),
        "build_vectors_per_s": round(args.n / build_s),
        "flat_ms_per_query_batched": round(flat_s / args.queries * 1e3, 4),
        "hnsw": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
        "quality_embedder": args.embedder,
        "quality_top3": quality,
    }
    Path(".bench").mkdir(exist_ok=True)
    with open(".bench/rag.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
