"""Shared fixtures: tiny random HF Llama / Qwen2 models written to GGUF with gguf-py's writer,
the way llama.cpp's converter writes them (llama's q/k rows permuted, 1-D tensors in F32)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.2,
)  # rows of 64 and 96: whole blocks of 32 for Q8_0 / Q4_0 / Q4_1
HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_model(arch: str, *, tie: bool = False, seed: int = 0, **overrides):
    """A random-init HF ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` in float32."""
    import transformers

    torch.manual_seed(seed)
    fields = TINY | {"tie_word_embeddings": tie, "rope_theta": 10000.0} | overrides
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**fields))
    return model.float().eval()


def permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: interleave the two rotary halves of each head's rows."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_tensors(model, arch: str) -> dict[str, np.ndarray]:
    """The model's tensors under GGUF names, float32, permuted as llama.cpp's converter does."""
    cfg = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["model.embed_tokens.weight"]}
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in HF_TO_GGUF.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.{ours}.{kind}"
                if key not in state:
                    continue
                w = state[key]
                if arch == "llama" and theirs == "attn_q":
                    w = permute_for_gguf(w, cfg.num_attention_heads)
                elif arch == "llama" and theirs == "attn_k":
                    w = permute_for_gguf(w, cfg.num_key_value_heads)
                out[f"blk.{i}.{theirs}.{kind}"] = np.ascontiguousarray(w)
    out["output_norm.weight"] = state["model.norm.weight"]
    if not cfg.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    return out


def write_gguf(
    model,
    arch: str,
    path: Path,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    *,
    metadata: dict | None = None,
) -> Path:
    """Write ``model`` to ``path``: matrices as ``qtype``, 1-D tensors as F32, with the hparams
    llama.cpp reads and a byte-level vocabulary; ``metadata`` adds ``add_*`` writer calls."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    tokens = [chr(0x100 + i) if i < 33 else chr(i) for i in range(cfg.vocab_size - 2)]
    tokens += ["<|im_start|>", "<|im_end|>"]
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.NORMAL] * (cfg.vocab_size - 2) + [gguf.TokenType.CONTROL] * 2
    )
    writer.add_token_merges([])
    writer.add_eos_token_id(cfg.vocab_size - 1)
    for name, value in (metadata or {}).items():
        getattr(writer, f"add_{name}")(value)
    for name, w in gguf_tensors(model, arch).items():
        if w.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_dequantized(model, arch: str, qtype: gguf.GGMLQuantizationType) -> None:
    """Give the HF model the weights a ``qtype`` GGUF holds: each matrix quantized and
    dequantized by gguf-py (llama's q/k permuted there and back)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim != 2:
                continue
            w = p.detach().float().numpy()
            back = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
            p.copy_(torch.from_numpy(np.ascontiguousarray(back)).reshape(p.shape))


@pytest.fixture
def tiny_gguf(tmp_path):
    """Factory ``tiny_gguf(arch, qtype, *, tie=False, metadata=None, **hf_overrides)`` ->
    ``(hf_model, path)``: the HF model holds the weights the file holds (dequantized)."""

    def make(
        arch: str = "llama",
        qtype=gguf.GGMLQuantizationType.F32,
        *,
        tie: bool = False,
        metadata: dict | None = None,
        **overrides,
    ):
        model = hf_model(arch, tie=tie, **overrides)
        path = tmp_path / f"{arch}-{qtype.name}.gguf"
        write_gguf(model, arch, path, qtype, metadata=metadata)
        load_dequantized(model, arch, qtype)
        return model, path

    return make


@pytest.fixture
def gguf_tensor_map():
    """``gguf_tensors(hf_model, arch)``: a model's tensors under GGUF names, as written."""
    return gguf_tensors
