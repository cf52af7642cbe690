"""The int8 / q4 schemes, quantize_model, calibration, and quantized checkpoints that load back
through llm_core.load_model and llm_infer.load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from llm_core import ModelConfig, Transformer, load_model, save_model
from llm_kernels import reference
from llm_quant import (
    GGUFLinear,
    Int8Linear,
    Q4Linear,
    Scheme,
    collect_activation_stats,
    quantize_int8,
    quantize_model,
    quantize_q4,
)

CONFIG = ModelConfig(
    vocab_size=256, n_embd=256, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=64, mlp="swiglu"
)
SCHEMES = [
    Scheme("int8"),
    Scheme("int8", activations="dynamic"),
    Scheme("q4", group_size=32),
    Scheme("q4", group_size=64, zero_points=True),
    Scheme("q4", group_size=128, activations="float"),
]


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(CONFIG).eval()


def tokens(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, CONFIG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def test_int8_rounds_each_weight_to_the_nearest_step():
    torch.manual_seed(0)
    w = torch.randn(33, 100)
    q, s = quantize_int8(w)
    deq = reference.dequantize_int8(q, s)
    assert q.dtype == torch.int8 and s.shape == (33,)
    assert ((deq - w).abs() <= s.unsqueeze(1) / 2 * 1.0001).all()
    assert torch.equal(q.abs().amax(1), torch.full((33,), 127, dtype=torch.int8))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("zero_points", [False, True])
def test_q4_error_is_within_a_step_and_packing_follows_the_reference(group, zero_points):
    torch.manual_seed(group)
    w = torch.randn(7, 256)
    q, s, m = quantize_q4(w, group, zero_points)
    assert q.shape == (7, 128) and s.shape == (7, 256 // group)
    assert (m is not None) == zero_points
    deq = reference.dequantize_q4(q, s, m, group)  # the shared layout's reading
    step = s.float().abs().repeat_interleave(group, 1)
    # clipping may cut the largest values by up to 25% of their group's range
    assert ((deq - w).abs() <= step * 4).all(), ((deq - w).abs() / step).max()
    rel = ((deq - w).norm() / w.norm()).item()
    assert rel < 0.12, rel


def test_q4_with_importance_lowers_the_weighted_error():
    torch.manual_seed(3)
    w = torch.randn(64, 256)
    importance = torch.rand(256) ** 4 * 100  # a few channels matter much more
    errors = []
    for imp in (None, importance):
        q, s, m = quantize_q4(w, 64, False, imp)
        deq = reference.dequantize_q4(q, s, m, 64)
        errors.append((importance * (deq - w) ** 2).sum().item())
    assert errors[1] < errors[0], errors


def test_scheme_validation_and_round_trip():
    for scheme in SCHEMES:
        assert Scheme.from_dict(json.loads(json.dumps(scheme.to_dict()))) == scheme
    with pytest.raises(ValueError, match="group_size"):
        Scheme("q4", group_size=48)
    with pytest.raises(ValueError, match="unknown scheme"):
        Scheme("q3")
    with pytest.raises(ValueError, match="activations"):
        Scheme("int8", activations="fp8")
    with pytest.raises(ValueError, match="unknown quantization scheme field"):
        Scheme.from_dict({"name": "int8", "bits": 8})


@pytest.mark.parametrize("scheme", SCHEMES, ids=Scheme.describe)
def test_quantize_model_replaces_linears_and_stays_close(scheme):
    model = tiny_model()
    x = tokens()
    with torch.no_grad():
        want = model(x)
        model.fuse_projections()  # fused float projections must not survive quantization
        quantize_model(model, scheme)
        got = model(x)
    kind = Int8Linear if scheme.name == "int8" else Q4Linear
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, kind) and isinstance(layer.mlp.down_proj, kind)
    assert type(model.lm_head).__name__ == "Linear"  # skipped by default
    assert layer.self_attn.qkv is None and layer.mlp.gate_up is None
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < (0.02 if scheme.name == "int8" else 0.25), rel  # random weights: q4 ~0.1-0.17


def test_compression_of_linear_weights():
    sizes = {}
    for scheme in (
        Scheme("int8"),
        Scheme("q4", group_size=64),
        Scheme("q4", group_size=64, zero_points=True),
    ):
        model = quantize_model(tiny_model(), scheme)
        layers = [m for m in model.modules() if isinstance(m, (Int8Linear, Q4Linear))]
        fp32 = sum(4 * m.in_features * m.out_features for m in layers)
        sizes[scheme.describe()] = fp32 / sum(m.weight_bytes() for m in layers)
    assert sizes["int8"] >= 3.9 and sizes["q4 g64"] >= 6.5 and sizes["q4 g64 zp"] >= 6.5, sizes


def test_calibration_collects_mean_squared_inputs():
    model = tiny_model()
    batches = [tokens(seed=s) for s in range(3)]
    stats = collect_activation_stats(model, batches, max_batches=2)
    assert set(stats) >= {"model.layers.0.self_attn.q_proj", "lm_head"}
    assert stats["model.layers.1.mlp.down_proj"].shape == (CONFIG.ffn_dim,)
    captured = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].reshape(-1, CONFIG.n_embd))
    )
    with torch.no_grad():
        for b in batches[:2]:
            model(b)
    hook.remove()
    want = torch.cat(captured).pow(2).mean(0)
    torch.testing.assert_close(stats["model.layers.0.self_attn.q_proj"], want)
    assert not model.model.layers[0].self_attn.q_proj._forward_pre_hooks  # hooks removed
    with pytest.raises(ValueError, match="no batches"):
        collect_activation_stats(model, [])
    quantize_model(model, Scheme("q4", group_size=32), calibration=batches)
    assert isinstance(model.model.layers[0].mlp.up_proj, Q4Linear)


@pytest.mark.parametrize("scheme", [SCHEMES[0], SCHEMES[1], SCHEMES[3]], ids=Scheme.describe)
def test_quantized_checkpoint_round_trips_with_identical_logits(tmp_path, scheme):
    model = quantize_model(tiny_model(), scheme)
    x = tokens()
    with torch.no_grad():
        want = model(x)
    save_model(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["quantization"]["scheme"] == scheme.to_dict()
    loaded = load_model(tmp_path / "ckpt")
    layer = loaded.model.layers[1].mlp.gate_proj
    assert type(layer) is type(model.model.layers[1].mlp.gate_proj)
    assert layer.qweight.dtype in (torch.int8, torch.uint8)
    assert not any(n.endswith("proj.weight") for n, _ in loaded.named_parameters())
    with torch.no_grad():
        assert torch.equal(loaded(x), want)


def test_quantized_checkpoint_loads_through_llm_infer(tmp_path):
    llm_infer = pytest.importorskip("llm_infer")
    from llm_tokenizer import Tokenizer, bytes_to_unicode

    chars = bytes_to_unicode()
    tokenizer = Tokenizer([chars[b] for b in range(256)], [])
    model = quantize_model(tiny_model(), Scheme("q4", group_size=64))
    x = tokens(1)
    with torch.no_grad():
        want = model(x)
    save_model(model, tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt" / "tokenizer.json")
    llm = llm_infer.load(tmp_path / "ckpt")
    assert isinstance(llm.model.model.layers[0].self_attn.k_proj, Q4Linear)
    with torch.no_grad():
        assert torch.equal(llm.model(x), want)


def test_a_corrupt_quantization_entry_is_a_clear_error(tmp_path):
    from llm_core import CheckpointError

    save_model(quantize_model(tiny_model(), "int8"), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["quantization"]["scheme"]["name"] = "q3"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown scheme 'q3'"):
        load_model(tmp_path / "ckpt")
    config["quantization"]["method"] = "other"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="method 'other'"):
        load_model(tmp_path / "ckpt")


@pytest.mark.parametrize("format", ["q8_0", "q4_0", "q4_1"])
def test_gguf_linear_keeps_the_blocks_and_multiplies_by_their_values(format):
    torch.manual_seed(0)
    n, k, size = 24, 96, reference.BLOCK_BYTES[format]
    blocks = torch.randint(0, 256, (n, k // 32, size), dtype=torch.uint8)
    blocks[..., :2] = torch.full((n, k // 32, 1), 0.01).half().view(torch.uint8)  # sane scales
    if format == "q4_1":
        blocks[..., 2:4] = torch.full((n, k // 32, 1), -0.05).half().view(torch.uint8)
    blocks = blocks.reshape(n, -1)
    layer = GGUFLinear.from_blocks(blocks, format, k, activations="float")
    assert layer.blocks.data_ptr() == blocks.data_ptr()
    x = torch.randn(3, k)
    want = F.linear(x.double(), layer.dequantize().double()).float()
    torch.testing.assert_close(layer(x), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="blocks for 64 inputs"):
        GGUFLinear.from_blocks(blocks, format, 64)


@pytest.mark.parametrize("format", ["q8_0", "q4_0", "q4_1"])
def test_gguf_linear_with_int16_activations(format):
    """int16 activations: the product within half an int16 step of each block's amax (and
    float32 rounding) of the dequantized one; an unknown mode is refused."""
    torch.manual_seed(1)
    n, k, size = 40, 128, reference.BLOCK_BYTES[format]
    blocks = torch.randint(0, 256, (n, k // 32, size), dtype=torch.uint8)
    blocks[..., :2] = torch.full((n, k // 32, 1), 0.01).half().view(torch.uint8)
    if format == "q4_1":
        blocks[..., 2:4] = torch.full((n, k // 32, 1), -0.05).half().view(torch.uint8)
    layer = GGUFLinear.from_blocks(blocks.reshape(n, -1), format, k, activations="int16")
    assert "activations=int16" in repr(layer)
    x = torch.randn(3, k)
    w = layer.dequantize().double()
    amax = x.double().reshape(3, -1, 32).abs().amax(-1, keepdim=True).expand(3, k // 32, 32)
    bound = (amax.reshape(3, k) / 65534 + 1e-6 * x.double().abs()) @ w.abs().T
    assert ((layer(x).double() - x.double() @ w.T).abs() <= bound).all()
    with pytest.raises(ValueError, match="'float', 'int8', 'dynamic' or 'int16', got 'int4'"):
        GGUFLinear(k, n, format, activations="int4")
