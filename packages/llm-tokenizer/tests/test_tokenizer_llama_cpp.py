"""GGUF vocabularies: written with gguf-py, read back with its reader, tokenized by llama.cpp and by us."""

from __future__ import annotations

import json

import pytest
from llm_tokenizer import Tokenizer
from llm_tokenizer.gguf import BYTE, CONTROL, NORMAL, UNKNOWN
from llm_tokenizer.patterns import LLAMA3_PATTERN

pytestmark = pytest.mark.peers

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")


def write_vocab_gguf(path, model: str, tokens: list[str], token_types: list[int], **fields) -> dict:
    """A vocabulary-only GGUF file (tiny hparams so llama.cpp accepts it); returns its metadata."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(32)
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    for name, value in fields.items():
        getattr(writer, f"add_{name}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {key: field.contents() for key, field in gguf.GGUFReader(str(path)).fields.items()}


def llama_cpp_vocab(path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.mark.parametrize(
    ("pre", "hf_fixture"), [("gpt-2", "hf_byte_level"), ("llama-bpe", "hf_split_pattern")]
)
def test_gguf_gpt2_matches_llama_cpp(pre, hf_fixture, request, corpus, special_tokens, tmp_path):
    hf = request.getfixturevalue(hf_fixture)
    vocab = hf.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    metadata = write_vocab_gguf(
        tmp_path / "vocab.gguf",
        "gpt2",
        tokens,
        [CONTROL if t in special_tokens else NORMAL for t in tokens],
        tokenizer_pre=pre,
        token_merges=[" ".join(m) for m in json.loads(hf.to_str())["model"]["merges"]],
        eos_token_id=vocab["<|endoftext|>"],
    )
    ours = Tokenizer.from_gguf(metadata)
    assert ours.pattern == (LLAMA3_PATTERN if pre == "llama-bpe" else ours.pattern)
    reference = llama_cpp_vocab(tmp_path / "vocab.gguf")
    text = corpus["held_out"][:300_000]
    expected = reference.tokenize(text.encode(), add_bos=False, special=True)
    assert ours.encode(text) == expected
    assert ours.decode(expected) == text
    # Token by token (llama-cpp-python's detokenize drops pieces of 32 bytes or more).
    short = [i for i in range(ours.vocab_size) if len(ours.token_bytes[i]) < 32]
    assert [reference.detokenize([i], special=True) for i in short] == [
        ours.token_bytes[i] for i in short
    ]


def test_gguf_llama_matches_llama_cpp(hf_metaspace, corpus, tmp_path):
    vocab = hf_metaspace.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    types = [
        UNKNOWN
        if t == "<unk>"
        else CONTROL
        if t in ("<s>", "</s>")
        else BYTE
        if t.startswith("<0x")
        else NORMAL
        for t in tokens
    ]
    metadata = write_vocab_gguf(
        tmp_path / "vocab.gguf",
        "llama",
        tokens,
        types,
        token_scores=[-float(i) for i in range(len(tokens))],  # earlier merges score higher
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        unk_token_id=vocab["<unk>"],
    )
    ours = Tokenizer.from_gguf(metadata)
    assert ours.add_bos_token and ours.bos_token == "<s>"
    reference = llama_cpp_vocab(tmp_path / "vocab.gguf")
    text = corpus["held_out"][:200_000].replace("<|endoftext|>", "</s>")
    expected = reference.tokenize(text.encode(), add_bos=False, special=True)
    assert ours.encode(text) == expected
    # llama-cpp-python keeps the prefix space that our decode (like HF's Llama decoder) drops.
    assert ours.token_bytes_of(expected) == reference.detokenize(expected, special=True)
    assert ours.encode("Hello", add_bos=True) == reference.tokenize(b"Hello", add_bos=True)
