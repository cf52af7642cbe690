"""Retrieval for llm: chunking, embedders, indexes, prompt assembly. No torch."""

from importlib.metadata import version as _version

from llm_rag.bm25 import BM25Index, reciprocal_rank_fusion
from llm_rag.chunking import Chunk, Chunker
from llm_rag.embedders import CallableEmbedder, HashingEmbedder, load_embedder
from llm_rag.errors import EmptyIndexError, IndexFormatError, RagError
from llm_rag.index import FlatIndex, HNSWIndex, load_index, make_index
from llm_rag.loading import LoadReport, find_files
from llm_rag.protocols import Embedder, Index, Tokenizer
from llm_rag.retriever import Hit, Retriever, build_prompt

__version__ = _version("llm-rag")

__all__ = [
    "BM25Index",
    "CallableEmbedder",
    "Chunk",
    "Chunker",
    "Embedder",
    "EmptyIndexError",
    "FlatIndex",
    "HNSWIndex",
    "HashingEmbedder",
    "Hit",
    "Index",
    "IndexFormatError",
    "LoadReport",
    "RagError",
    "Retriever",
    "Tokenizer",
    "__version__",
    "build_prompt",
    "find_files",
    "load_embedder",
    "load_index",
    "make_index",
    "reciprocal_rank_fusion",
]
