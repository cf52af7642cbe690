"""ModelConfig: presets, file formats and one-line errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_core import ConfigError, ModelConfig

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_seed_preset():
    c = ModelConfig.from_file(CONFIGS / "model_config.yaml")
    assert (c.n_embd, c.n_head, c.n_layer, c.vocab_size, c.max_seq_len) == (
        768,
        12,
        12,
        50257,
        2048,
    )
    assert (c.rope_base, c.mlp, c.ffn_dim) == (10000.0, "gelu", 3072)


def test_llama_125m_preset():
    c = ModelConfig.from_file(CONFIGS / "llama-125m.yaml")
    assert (c.n_embd, c.n_layer, c.n_head, c.kv_heads, c.ffn_dim, c.vocab_size) == (
        768,
        12,
        12,
        4,
        2048,
        32000,
    )
    assert c.mlp == "swiglu" and not c.tie_embeddings


def test_every_preset_validates():
    for path in CONFIGS.glob("*.yaml"):
        ModelConfig.from_file(path)


def test_json_toml_and_nested_model_key(tmp_path):
    fields = dict(vocab_size=10, n_embd=16, n_layer=1, n_head=2)
    (tmp_path / "c.json").write_text(json.dumps(fields))
    (tmp_path / "c.toml").write_text("\n".join(f"{k} = {v}" for k, v in fields.items()))
    (tmp_path / "c.yaml").write_text(
        "model:\n" + "".join(f"  {k}: {v}\n" for k, v in fields.items()) + "train: {}\n"
    )
    configs = [ModelConfig.from_file(tmp_path / f"c.{ext}") for ext in ("json", "toml", "yaml")]
    assert configs[0] == configs[1] == configs[2] == ModelConfig(**fields)
    assert ModelConfig.from_dict(configs[0].to_dict()) == configs[0]


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(n_embd=770, n_head=12), r"n_embd \(770\) must be divisible by n_head \(12\)"),
        (dict(n_head=12, n_kv_head=5), r"n_head \(12\) must be divisible by n_kv_head \(5\)"),
        (dict(n_layer=0), "n_layer must be positive"),
        (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
        (dict(mlp="relu"), "mlp: Input should be 'gelu' or 'swiglu'"),
        (dict(n_embd="wide"), "n_embd: Input should be a valid integer"),
        (dict(hidden=3), "hidden: unknown field"),
        (dict(window_size=0), "window_size must be positive"),
    ],
)
def test_errors_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message) as info:
        ModelConfig.from_dict(fields)
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        ModelConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("n_embd: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        ModelConfig.from_file(tmp_path / "bad.yaml")
    (tmp_path / "c.ini").write_text("x")
    with pytest.raises(ConfigError, match="unknown config format '.ini'"):
        ModelConfig.from_file(tmp_path / "c.ini")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        ModelConfig.from_file(tmp_path / "list.yaml")
