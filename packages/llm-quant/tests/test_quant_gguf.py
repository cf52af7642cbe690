"""GGUF files written by gguf-py from random HF Llama / Qwen2 models: config, weights, logits."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from llm_kernels import native, quant
from llm_quant import GGUFEmbedding, GGUFLinear
from llm_quant.gguf import (
    HEAD_ACTIVATIONS,
    GGUFError,
    GGUFFile,
    gguf_config,
    load_gguf_model,
    unpermute_qk,
)

T = gguf.GGMLQuantizationType
TYPES = [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_match_hf_with_the_same_weights(arch, qtype, tiny_gguf):
    """Our model from the GGUF against HF's holding the same (dequantized by gguf-py) weights."""
    hf, path = tiny_gguf(arch, qtype)
    ours, _ = load_gguf_model(path, quantized=False)
    ids = torch.randint(
        0, hf.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected = hf(ids).logits  # [2, 24, V]
        got = ours(ids)  # [2, 24, V]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_tied_embeddings_when_output_weight_is_absent(tiny_gguf):
    hf, path = tiny_gguf("llama", T.Q8_0, tie=True)
    ours, file = load_gguf_model(path, quantized=False)
    assert "output.weight" not in file.tensors and ours.config.tie_embeddings
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids = torch.arange(20).reshape(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize(("arch", "tie"), [("llama", False), ("qwen2", True)])
def test_quantized_load_keeps_the_blocks_and_matches_hf(arch, tie, qtype, tiny_gguf):
    """The default load: linear layers are GGUFLinear over the file's own bytes (a tied head
    over the embedding's), the same logits with float activations, close with int8 ones."""
    hf, path = tiny_gguf(arch, qtype, tie=tie)
    ours, file = load_gguf_model(path)
    layers = [m for m in ours.modules() if isinstance(m, GGUFLinear)]
    assert len(layers) == 7 * ours.config.n_layer + 1  # q k v o gate up down, and the head
    kind = qtype.name.lower()
    # 4-bit layers with int8 activations interleave eight rows (the native kernel's fast
    # layout), a tied head keeps the embedding's blocks, Q8_0 the file's
    for m in layers:
        fast = kind != "q8_0" and m.activations == "int8" and native.available()
        want = kind + "x8" if fast and not (tie and m is ours.lm_head) else kind
        assert m.format == want, (m, want)
    assert isinstance(ours.model.embed_tokens, GGUFEmbedding)  # rows dequantized on lookup
    o_proj = ours.model.layers[0].self_attn.o_proj
    mapped = file.tensors["blk.0.attn_output.weight"].data
    if o_proj.interleaved:  # the same bytes in another order; the state dict in the file's
        assert torch.equal(
            o_proj.state_dict()["blocks"], torch.from_numpy(np.array(mapped)).view_as(o_proj.blocks)
        )
        assert o_proj.native_weight()[1] == quant.FORMATS[kind + "x8"]
    else:
        assert o_proj.blocks.data_ptr() == mapped.ctypes.data  # the file's bytes, not a copy
    ids = torch.randint(
        0, hf.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        expected = hf(ids).logits  # [1, 16, V]
        int8 = ours(ids)
        for m in layers:
            m.activations = "float"
        exact = ours(ids)
    torch.testing.assert_close(exact, expected, atol=1e-4, rtol=0)
    rel = ((int8 - expected).norm() / expected.norm()).item()
    assert rel < 0.05, rel


# The most each head arithmetic's rounding of activations moves an output, per unit of
# sum_j amax(block of j) |W[:, j]|: half a step, amax / 127 / 2 (int8) or amax / 32767 / 2.
HALF_STEP = {"float": 0.0, "int16": 1 / 65534, "int8": 1 / 254}


@pytest.mark.parametrize("head", ["float", "int16", "int8"])
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "output"])
def test_head_activations_choose_the_lm_heads_arithmetic(head, qtype, tie, tiny_gguf):
    """``head_activations``: the LM head's (tied or output.weight) arithmetic, the other
    layers int8; its products against its dequantized weight in float64, within the
    rounding of its activations (none for float) and float32's."""
    _, path = tiny_gguf("llama", qtype, tie=tie)
    ours, _ = load_gguf_model(path, head_activations=head)
    lm_head = ours.lm_head
    assert isinstance(lm_head, GGUFLinear) and lm_head.activations == head
    others = [m for m in ours.modules() if isinstance(m, GGUFLinear) and m is not lm_head]
    assert others and all(m.activations == "int8" for m in others)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    w = lm_head.dequantize().double()  # (V, 64)
    with torch.no_grad():
        got = lm_head(x).double()
    amax = x.double().reshape(5, 2, 32).abs().amax(-1, keepdim=True).expand(5, 2, 32)
    bound = (amax.reshape(5, 64) * HALF_STEP[head] + 1e-6 * x.double().abs()) @ w.abs().T
    over = ((got - x.double() @ w.T).abs() - bound).max().item()
    assert over <= 0, over


def test_head_activations_default_and_errors(tiny_gguf):
    _, path = tiny_gguf("qwen2", T.Q8_0, tie=True)
    ours, _ = load_gguf_model(path)
    assert ours.lm_head.activations == HEAD_ACTIVATIONS
    with pytest.raises(
        ValueError, match="head_activations must be 'float', 'int16' or 'int8', got 'int4'"
    ):
        load_gguf_model(path, head_activations="int4")


def test_config_from_metadata(tiny_gguf):
    _, path = tiny_gguf(
        "llama",
        metadata={"rope_scaling_type": gguf.RopeScalingType.LINEAR, "rope_scaling_factor": 4.0},
    )
    config = GGUFFile(path).config()
    assert (config.n_embd, config.n_layer, config.n_head, config.kv_heads) == (64, 2, 4, 2)
    assert (config.ffn_dim, config.max_seq_len, config.vocab_size) == (96, 128, 96)
    assert config.norm_eps == pytest.approx(1e-6) and config.rope_base == 10000.0
    assert config.rope_scaling.type == "linear" and config.rope_scaling.factor == 4.0
    assert not config.qkv_bias and not config.tie_embeddings


def test_yarn_keys():
    metadata = {
        "general.architecture": "qwen2",
        "qwen2.embedding_length": 64,
        "qwen2.block_count": 1,
        "qwen2.feed_forward_length": 96,
        "qwen2.attention.head_count": 4,
        "qwen2.context_length": 131072,
        "qwen2.rope.scaling.type": "yarn",
        "qwen2.rope.scaling.factor": 4.0,
        "qwen2.rope.scaling.original_context_length": 32768,
        "qwen2.vocab_size": 100,
    }
    config = gguf_config(metadata, {})
    assert config.rope_scaling.type == "yarn" and config.rope_scaling.factor == 4.0
    assert config.original_max_seq_len == 32768 and config.max_seq_len == 131072


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"general.architecture": "falcon"},
            "architecture 'falcon' is not supported .supported: llama, qwen2",
        ),
        ({"general.architecture": "qwen3"}, "architecture 'qwen3' is not supported"),
        ({"llama.block_count": None}, "missing metadata key 'llama.block_count'"),
        (
            {"llama.rope.scaling.type": "longrope", "llama.rope.scaling.factor": 2.0},
            "rope scaling type 'longrope'",
        ),
        ({"llama.rope.dimension_count": 8}, "partial rotary"),
        ({"llama.block_count": "two"}, "llama.block_count must be an integer"),
        ({"llama.attention.head_count": 3}, "n_embd .64. must be divisible by n_head .3."),
    ],
)
def test_config_errors(change, message):
    metadata = {
        "general.architecture": "llama",
        "llama.embedding_length": 64,
        "llama.block_count": 1,
        "llama.feed_forward_length": 96,
        "llama.attention.head_count": 4,
        "llama.vocab_size": 100,
    }
    metadata = {k: v for k, v in (metadata | change).items() if v is not None}
    with pytest.raises(GGUFError, match=message):
        gguf_config(metadata, {}, source="x.gguf")


def test_unpermute_inverts_the_converter_permutation(gguf_tensor_map):
    w = torch.arange(8 * 3 * 5, dtype=torch.float32).reshape(24, 5)  # 3 heads of 8 rows
    permuted = w.reshape(3, 2, 4, 5).transpose(1, 2).reshape(24, 5)  # llama.cpp's converter
    torch.testing.assert_close(unpermute_qk(permuted, 3), w, rtol=0, atol=0)
    bias = torch.arange(24.0)
    torch.testing.assert_close(
        unpermute_qk(bias.reshape(3, 2, 4).transpose(1, 2).reshape(24), 3), bias
    )


def test_metadata_and_tensors_equal_gguf_py_reader(tiny_gguf):
    _, path = tiny_gguf(
        "qwen2", T.Q4_0, metadata={"chat_template": "{{ x }}", "add_bos_token": False}
    )
    ours = GGUFFile(path)
    reader = gguf.GGUFReader(str(path))
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == theirs and ours.version == 3
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = ours.tensors[t.name]
        assert info.type == t.tensor_type and info.n_bytes == t.n_bytes
        assert info.shape == tuple(reversed(t.shape.tolist())) and info.offset == t.data_offset
        assert info.data.tobytes() == t.data.tobytes()


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1], ids=lambda t: t.name)
def test_an_interleaved_layer_keeps_the_files_order_in_its_state_dict(qtype):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(0)).numpy()
    blocks = torch.from_numpy(gguf.quants.quantize(w, qtype).copy())
    kind = qtype.name.lower()
    plain = GGUFLinear.from_blocks(blocks.clone(), kind, 64)
    layer = GGUFLinear.from_blocks(blocks.clone(), kind, 64)
    assert layer.interleave() and layer.format == kind + "x8" and layer.interleaved
    assert not layer.interleave()  # once
    assert torch.equal(layer.state_dict()["blocks"], blocks)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), plain(x), atol=1e-5, rtol=0)
    other = torch.from_numpy(gguf.quants.quantize(w[::-1].copy(), qtype).copy())
    layer.load_state_dict({"blocks": other})  # the file's order in, interleaved inside
    plain.load_state_dict({"blocks": other})
    torch.testing.assert_close(layer(x), plain(x), atol=1e-5, rtol=0)
    assert torch.equal(layer.dequantize(), plain.dequantize())
    # layers it does not apply to stay as they are
    odd = GGUFLinear.from_blocks(blocks[:12].clone(), kind, 64)  # 12 rows: not groups of 8
    int16 = GGUFLinear.from_blocks(blocks.clone(), kind, 64, activations="int16")
    assert not odd.interleave() and not int16.interleave() and int16.format == kind
