"""The mean-pool embedder over an llm-core model (the ``core`` extra): the mean of the model's
own hidden states, unchanged by batching and padding, truncated to the context, normalised."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llm_core = pytest.importorskip("llm_core")

from llm_rag import Embedder, Retriever  # noqa: E402
from llm_rag.core import MeanPoolEmbedder  # noqa: E402


class ByteTokenizer:
    """One id per UTF-8 byte (vocabulary 256)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    config = llm_core.ModelConfig(
        vocab_size=256, n_embd=32, n_layer=2, n_head=4, max_seq_len=24, original_max_seq_len=24
    )
    model = llm_core.Transformer(config).eval()
    return MeanPoolEmbedder(model, ByteTokenizer(), spec="core:test", batch_size=3)


def reference(embedder, text: str) -> np.ndarray:
    """One text alone, no padding: the mean over tokens of hidden_states, then unit length."""
    ids = torch.tensor([ByteTokenizer().encode(text)[:24]])  # (1, T)
    with torch.no_grad():
        mean = embedder.model.hidden_states(ids)[0].mean(dim=0)  # (C,)
    return (mean / mean.norm()).numpy()


def test_mean_pool_matches_hidden_states_and_ignores_padding(embedder):
    texts = ["a", "hello world", "x" * 40, "", "mean pooling", "zz"]  # lengths differ: padding
    out = embedder.embed(texts)
    assert out.shape == (6, 32) and out.dtype == np.float32
    assert isinstance(embedder, Embedder)
    for row, text in zip(out, texts, strict=True):
        if text:
            np.testing.assert_allclose(row, reference(embedder, text), atol=1e-5)
        else:
            assert not row.any()  # no tokens: zeros, as the hashing embedder does
    np.testing.assert_allclose(out[2], embedder.embed(["x" * 24])[0], atol=1e-6)  # truncated


def test_core_embedder_in_a_retriever(embedder, tmp_path):
    retriever = Retriever(embedder, index_spec="Flat")
    retriever.add_texts(["alpha beta", "gamma delta"], ["a", "b"])
    assert retriever.query("alpha beta", 1, mode="dense")[0].chunk.source == "a"
    retriever.save(tmp_path / "ix")
    loaded = Retriever.load(tmp_path / "ix", embedder=embedder)
    assert loaded.info()["embedder"] == "core:test"
