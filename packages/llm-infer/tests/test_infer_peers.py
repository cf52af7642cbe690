"""Greedy tokens of llm-infer against llama.cpp (llama-cpp-python) on the same F32 GGUF weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from llm_core import ModelConfig, Transformer
from llm_infer import LLM

pytestmark = pytest.mark.peers
BENCH = Path(__file__).resolve().parents[3] / "benches" / "decode.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("decode_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_greedy_matches_llama_cpp_on_f32_gguf(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    bench = bench_module()
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=128,
        max_seq_len=256, mlp="swiglu", tie_embeddings=False, init_std=0.2,
    )  # fmt: skip
    model = Transformer(config).eval()
    tokenizer = bench.placeholder_tokenizer(config.vocab_size)
    path = tmp_path / "tiny.gguf"
    bench.write_gguf(model, tokenizer, path)
    prompt = list(range(300, 316))
    ours = LLM(model, tokenizer).generate(prompt, temperature=0, max_tokens=48, ignore_eos=True)
    cpp = llama_cpp.Llama(
        model_path=str(path), n_ctx=128, n_batch=16, n_threads=2, type_k=0, type_v=0, verbose=False
    )  # type_k/type_v 0: an F32 KV cache, like ours
    theirs = []
    for token in cpp.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == 48:
            break
    assert ours.token_ids == theirs
