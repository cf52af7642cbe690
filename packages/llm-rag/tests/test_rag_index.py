"""Vector indexes and BM25: against numpy's exact search and the BM25 formula written out,
deletion, persistence (identical results after reload, atomic replace, format checks)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from llm_rag import (
    BM25Index,
    FlatIndex,
    HNSWIndex,
    IndexFormatError,
    load_index,
    make_index,
    reciprocal_rank_fusion,
)
from llm_rag.bm25 import tokenize

N, D = 2000, 64


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, D)).astype(np.float32), rng.standard_normal((100, D)).astype(
        np.float32
    )


def exact_top_k(vectors, queries, k):
    """Reference: cosine similarity by plain numpy, full sort."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ v.T
    order = np.argsort(-sims, axis=1)[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def test_flat_index_is_exact(data):
    vectors, queries = data
    index = FlatIndex(D)
    index.add(vectors[:700])
    index.add(vectors[700:])
    ids, scores = index.search(queries, 10)
    ref_ids, ref_scores = exact_top_k(vectors, queries, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_hnsw_recall_against_flat(data):
    vectors, queries = data
    flat, hnsw = FlatIndex(D), HNSWIndex(D, M=16, ef_construction=100, ef=64)
    flat.add(vectors)
    for part in np.array_split(np.arange(N), 4):  # incremental adds grow the graph
        hnsw.add(vectors[part], part)
    want, _ = flat.search(queries, 10)
    got, scores = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)])
    assert recall >= 0.95, recall
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("spec", ["Flat", "HNSW16"])
def test_delete_then_search_never_returns_it(data, spec):
    vectors, _ = data
    index = make_index(spec, D)
    index.add(vectors[:500])
    gone = np.array([3, 17, 400])
    index.delete(gone)
    ids, scores = index.search(vectors[gone], 5)  # each query is a deleted vector itself
    assert not set(ids.ravel()) & set(gone.tolist())
    assert scores.max() < 0.999
    assert len(index) == 497
    with pytest.raises(KeyError, match="17"):
        index.delete([17])
    index.add(vectors[[3]], [3])  # re-adding a deleted id finds it again
    assert index.search(vectors[[3]], 1)[0][0, 0] == 3


@pytest.mark.parametrize("spec", ["Flat", "HNSW16"])
def test_save_reload_query_identical(data, spec, tmp_path):
    vectors, queries = data
    index = make_index(spec, D)
    index.add(vectors[:1000])
    index.delete(np.arange(0, 1000, 7))
    before = index.search(queries, 10)
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert type(loaded) is type(index) and len(loaded) == len(index)
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], rtol=1e-6)
    new_ids = loaded.add(vectors[1000:1010])  # ids continue after the saved ones
    assert new_ids.tolist() == list(range(1000, 1010))


def test_save_is_atomic(data, tmp_path, monkeypatch):
    vectors, _ = data
    index = FlatIndex(D)
    index.add(vectors[:10])
    index.save(tmp_path / "ix")
    index.add(vectors[10:20])

    def broken_save(path, array):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "ix")
    monkeypatch.undo()
    assert len(load_index(tmp_path / "ix")) == 10  # the old index, whole
    assert [p.name for p in tmp_path.iterdir()] == ["ix"]  # no temporary left behind


def test_bad_input_and_bad_directories(data, tmp_path):
    vectors, _ = data
    index = FlatIndex(D)
    with pytest.raises(ValueError, match=r"\[n, 64\]"):
        index.add(vectors[:, :10])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, D), np.nan))
    index.add(vectors[:2], [5, 6])
    with pytest.raises(ValueError, match="already"):
        index.add(vectors[:1], [6])
    with pytest.raises(ValueError, match="unknown index 'IVF100'"):
        make_index("IVF100", D)
    assert make_index("HNSW", D).M == 32 and make_index("hnsw48", D).M == 48
    with pytest.raises(IndexFormatError, match="no such directory"):
        load_index(tmp_path / "nothing")
    index.save(tmp_path / "ix")
    header = json.loads((tmp_path / "ix" / "index.json").read_text())
    header["format_version"] = 99
    (tmp_path / "ix" / "index.json").write_text(json.dumps(header))
    with pytest.raises(IndexFormatError, match="format version 99"):
        load_index(tmp_path / "ix")


def test_empty_index_and_small_k(data):
    vectors, queries = data
    index = HNSWIndex(D)
    ids, _ = index.search(queries[:2], 5)
    assert ids.shape == (2, 0)
    index.add(vectors[:3])
    assert index.search(queries[:2], 10)[0].shape == (2, 3)


DOCS = [
    "the quick brown fox jumps over the lazy dog",
    "a lazy afternoon: the dog sleeps and the cat sleeps",
    "os.path.join joins path components",
    "shutil copies files; os_path_join is not a function",
    "error 404 means not found, error 500 a server error",
]


def bm25_reference(docs, query, k1=1.2, b=0.75):
    """The Okapi BM25 formula, written out over token lists (Lucene's idf)."""
    toks = [tokenize(d) for d in docs]
    avg = sum(map(len, toks)) / len(toks)
    out = []
    for doc in toks:
        tf = Counter(doc)
        score = 0.0
        for term in tokenize(query):
            df = sum(term in d for d in toks)
            if not tf[term]:
                continue
            idf = math.log(1 + (len(toks) - df + 0.5) / (df + 0.5))
            score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(doc) / avg))
        out.append(score)
    return out


@pytest.mark.parametrize("query", ["lazy dog", "path join", "error 404", "sleeps sleeps cat"])
def test_bm25_matches_formula_and_survives_delete(query, tmp_path):
    index = BM25Index()
    index.add(DOCS, range(len(DOCS)))
    ref = bm25_reference(DOCS, query)
    got = index.scores(query)
    for i, want in enumerate(ref):
        assert got.get(i, 0.0) == pytest.approx(want, rel=1e-9)
    index.delete([1])  # statistics (N, df, average length) follow the deletion
    rest = [d for i, d in enumerate(DOCS) if i != 1]
    ref = bm25_reference(rest, query)
    got = index.scores(query)
    for i, want in zip([0, 2, 3, 4], ref, strict=True):
        assert got.get(i, 0.0) == pytest.approx(want, rel=1e-9)
    index.save(tmp_path / "bm25")
    assert BM25Index.load(tmp_path / "bm25").scores(query) == pytest.approx(got)


def test_bm25_exact_names_and_numbers():
    index = BM25Index()
    index.add(DOCS, range(len(DOCS)))
    assert index.search("os_path_join", 1)[0].tolist() == [3]
    assert index.search("404", 3)[0].tolist() == [4]  # only documents with a shared term
    assert tokenize("Call os_path_join(404)") == [
        "call",
        "os_path_join",
        "os",
        "path",
        "join",
        "404",
    ]


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    scores = dict(fused)
    assert scores[1] == pytest.approx(1 / 61 + 1 / 62)
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[4] == pytest.approx(1 / 63)
    assert [i for i, _ in fused] == [1, 3, 2, 4]
