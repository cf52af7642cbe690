"""The native decode step (one llm-kernels ``decode_layers`` call for the layers) against the model's
own modules: the same logits and the same cache, float32 and GGUF-quantized layers, one row and
a batch; the models it must not take fall back to the modules."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest
import torch
from llm_core import ModelConfig, Transformer
from llm_infer.generate import DecodeStep
from llm_infer.native_step import NativeDecoder
from llm_kernels import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.error}")
CONFIG = dict(
    vocab_size=256,
    n_embd=128,
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    intermediate_size=256,
    max_seq_len=256,
    mlp="swiglu",
    tie_embeddings=False,
    init_std=0.1,
)
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
PROJECTIONS += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def make_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_dict(CONFIG | overrides)).eval()


def quantize(
    model: Transformer, fmt: str, activations: str = "int8", layers: list[int] | None = None
) -> Transformer:
    """Every projection (of ``layers``, default all) as a GGUFLinear of gguf-py's ``fmt``
    blocks of its weight."""
    gguf = pytest.importorskip("gguf")
    from llm_quant.linear import GGUFLinear

    qtype = gguf.GGMLQuantizationType[fmt.removesuffix("x8").upper()]
    for i, layer in enumerate(model.model.layers):
        if layers is not None and i not in layers:
            continue
        for name in PROJECTIONS:
            parent_name, _, child = name.rpartition(".")
            parent = layer.get_submodule(parent_name)
            w = getattr(parent, child).weight.detach().numpy()
            blocks = torch.from_numpy(gguf.quants.quantize(w, qtype).copy())
            new = GGUFLinear.from_blocks(
                blocks, fmt.removesuffix("x8"), w.shape[1], activations=activations
            )
            if fmt.endswith("x8"):  # eight rows interleaved, as load_gguf_model keeps them
                assert new.interleave() and new.format == fmt
            setattr(parent, child, new)
    return model


def compare(model: Transformer, batch: int = 1, steps: int = 6) -> tuple[float, float]:
    """The worst logit and cache differences, relative, between the native step and the
    modules over ``steps`` decode steps after a 20-token prompt."""
    decoder = NativeDecoder.for_model(model)
    assert decoder is not None
    caches = [model.new_cache(batch, capacity=64) for _ in range(2)]
    prompt = torch.randint(0, 256, (batch, 20), generator=torch.Generator().manual_seed(1))
    worst_logits = worst_cache = 0.0
    with torch.no_grad():
        for cache in caches:
            model(prompt, cache, logits_to_keep=1)
        token = prompt[:, -1:]
        for t in range(steps):
            position = torch.full((batch, 1), 20 + t)
            ours = decoder(token, position, caches[0])  # (B, V)
            theirs = model(token, caches[1], position)[:, -1]  # (B, V)
            scale = theirs.abs().max().item()
            worst_logits = max(worst_logits, (ours - theirs).abs().max().item() / scale)
            token = theirs.argmax(-1, keepdim=True)  # both caches get the same next token
    assert caches[0].length == caches[1].length
    for a, b in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v, strict=True):
        worst_cache = max(worst_cache, (a - b).abs().max().item() / b.abs().max().item())
    return worst_logits, worst_cache


@pytest.mark.parametrize("batch", [1, 3])
def test_float_layers_give_the_modules_logits_and_cache(batch):
    model = make_model().fuse_projections()  # fused q/k/v and gate/up: one product each
    logits, cache = compare(model, batch)
    assert logits < 1e-5 and cache < 1e-5, (logits, cache)


def test_a_sliding_window_is_the_mask_the_model_computes():
    logits, cache = compare(make_model(window_size=8).fuse_projections())  # 20 > 8 tokens
    assert logits < 1e-5 and cache < 1e-5, (logits, cache)


def test_separate_float_projections_too():
    logits, cache = compare(make_model())  # not fused
    assert logits < 1e-5 and cache < 1e-5, (logits, cache)


def test_a_float_head_runs_inside_the_call_and_others_through_the_modules():
    model = make_model(tie_embeddings=True).fuse_projections()
    decoder = NativeDecoder.for_model(model)
    assert decoder is not None and decoder.head is not None
    assert decoder.head[1].data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    logits, cache = compare(model)
    assert logits < 1e-5 and cache < 1e-5, (logits, cache)

    class Scaled(torch.nn.Linear):  # a head of its own: its forward is not a plain product
        def forward(self, x):
            return 2 * super().forward(x)

    for head in (
        torch.nn.Linear(CONFIG["n_embd"], CONFIG["vocab_size"], bias=True),
        Scaled(CONFIG["n_embd"], CONFIG["vocab_size"], bias=False),
    ):
        model = make_model().fuse_projections()
        model.lm_head = head
        decoder = NativeDecoder.for_model(model)
        assert decoder is not None and decoder.head is None
        logits, cache = compare(model)
        assert logits < 1e-5 and cache < 1e-5, (type(head).__name__, logits, cache)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "q4_0x8", "q4_1x8"])
def test_gguf_layers_give_the_modules_logits_up_to_int8_rounding(fmt):
    # The same kernels with int8 activations; only the norms' float32 rounding differs, and
    # an activation block whose rounding it moves changes a product by one step of dx.
    logits, cache = compare(quantize(make_model(), fmt))
    assert logits < 2e-2 and cache < 2e-2, (logits, cache)


@pytest.mark.parametrize("quantized", [[0], [1]])
def test_layers_of_different_formats_each_get_their_own_activations(quantized):
    # layers share working buffers where their formats agree: a float layer before or after a
    # quantized one must neither skip nor disturb the int8 activations the other needs
    logits, cache = compare(quantize(make_model(n_layer=3), "q8_0", layers=quantized))
    assert logits < 2e-2 and cache < 2e-2, (logits, cache)


@pytest.mark.parametrize("fmt", [None, "q4_0", "q8_0", "q4_1x8"])
def test_the_step_gives_the_same_bits_on_any_number_of_threads(fmt):
    # decode_layers runs the step as one parallel region whose units any thread may take;
    # every output must still come from the same operations
    model = make_model() if fmt is None else quantize(make_model(), fmt)
    decoder = NativeDecoder.for_model(model)
    prompt = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(2))
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(1)  # the prompt through the modules, alike for every run
            cache = model.new_cache(3, capacity=64)
            with torch.no_grad():
                model(prompt, cache, logits_to_keep=1)
                torch.set_num_threads(threads)
                token, logits = prompt[:, -1:], []
                for t in range(4):
                    logits.append(decoder(token, torch.full((3, 1), 20 + t), cache))
                    token = logits[-1].argmax(-1, keepdim=True)
            runs.append((torch.stack(logits), [k.clone() for k in cache.k + cache.v]))
    finally:
        torch.set_num_threads(before)
    for logits, tensors in runs[1:]:
        assert torch.equal(logits, runs[0][0])
        assert all(torch.equal(a, b) for a, b in zip(tensors, runs[0][1], strict=True))


def steps(decoder, model, seed: int, n: int = 8) -> torch.Tensor:
    """The logits of ``n`` greedy native steps after a prompt of three rows."""
    prompt = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(seed))
    cache = model.new_cache(3, capacity=64)
    logits = []
    with torch.no_grad():
        model(prompt, cache, logits_to_keep=1)
        token = prompt[:, -1:]
        for t in range(n):
            logits.append(decoder(token, torch.full((3, 1), 20 + t), cache))
            token = logits[-1].argmax(-1, keepdim=True)
    return torch.stack(logits)  # (n, 3, V)


def test_steps_from_two_threads_at_once_give_their_own_bits():
    # the library's team serves one caller at a time; a step that finds it busy runs on
    # torch's OpenMP threads instead, with the same operations
    model = make_model()
    decoder = NativeDecoder.for_model(model)
    alone = [steps(decoder, model, seed) for seed in (3, 4)]
    together: dict[int, list[torch.Tensor]] = {3: [], 4: []}

    def run(seed: int) -> None:
        torch.set_num_threads(2)
        for _ in range(10):
            together[seed].append(steps(decoder, model, seed))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, expected in zip((3, 4), alone, strict=True):
        assert len(together[seed]) == 10
        assert all(torch.equal(logits, expected) for logits in together[seed])


def _child_step(queue) -> None:
    # libgomp's threads (torch's) do not survive a fork either: the child runs torch's ops on
    # one thread (as DataLoader workers do) and the native step on two
    torch.set_num_threads(1)
    model = make_model()
    decoder = NativeDecoder.for_model(model)
    prompt = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(5))
    cache = model.new_cache(3, capacity=64)
    with torch.no_grad():
        model(prompt, cache, logits_to_keep=1)
        torch.set_num_threads(2)
        queue.put(decoder(prompt[:, -1:], torch.full((3, 1), 20), cache).tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_steps_with_a_team_of_its_own():
    # the parent's team threads do not exist in a forked child: the child's first step must
    # start a team of its own rather than wait for them
    model = make_model()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = steps(NativeDecoder.for_model(model), model, 5)[0]  # the parent's team is up
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_step, args=(queue,), daemon=True)
        child.start()
        try:
            got = queue.get(timeout=60)
            child.join(timeout=60)
        finally:
            if child.is_alive():
                child.kill()
    finally:
        torch.set_num_threads(before)
    assert child.exitcode == 0
    assert torch.equal(torch.tensor(got), expected)


def test_decode_step_takes_the_native_step_by_default_only():
    model = make_model()
    assert DecodeStep(model).kind == "native"
    assert DecodeStep(model, compile=False).kind == "eager"
    assert DecodeStep(model, compile=True).kind == "compiled"


@pytest.mark.parametrize(
    "overrides",
    [dict(mlp="gelu"), dict(qkv_bias=True), dict(norm="layernorm"), dict(o_bias=True)],
    ids=["gelu-mlp", "qkv-bias", "layernorm", "o-bias"],
)
def test_blocks_it_does_not_compute_decode_through_the_modules(overrides):
    model = make_model(**overrides)
    assert NativeDecoder.for_model(model) is None
    assert DecodeStep(model).kind in ("eager", "compiled")


def test_layers_it_does_not_compute_decode_through_the_modules():
    model = quantize(make_model(), "q8_0", activations="float")  # the native layer is int8
    assert NativeDecoder.for_model(model) is None

    class Scaled(torch.nn.Linear):  # a layer of its own: its forward is not a plain product
        def forward(self, x):
            return 2 * super().forward(x)

    model = make_model()
    old = model.model.layers[1].mlp.down_proj
    model.model.layers[1].mlp.down_proj = Scaled(old.in_features, old.out_features, bias=False)
    assert NativeDecoder.for_model(model) is None


def test_models_with_a_forward_of_their_own_decode_through_it():
    model = make_model()

    class Wrapper:  # wraps a model as a test gate or a tracing hook does
        def __init__(self, inner):
            self.model, self.calls = inner, 0

        def __getattr__(self, name):
            return getattr(self.model, name)

        def forward(self, tokens, cache=None, positions=None, *, logits_to_keep=0):
            self.calls += 1
            return self.model.forward(tokens, cache, positions, logits_to_keep=logits_to_keep)

        __call__ = forward

    wrapped = Wrapper(model)
    assert NativeDecoder.for_model(wrapped) is None
    step = DecodeStep(wrapped, compile=None)
    assert step.kind != "native"

    class Doubled(type(model)):
        def forward(self, *args, **kwargs):
            return 2 * super().forward(*args, **kwargs)

    model.__class__ = Doubled
    assert NativeDecoder.for_model(model) is None


def test_other_caches_decode_through_the_modules():
    model = make_model(window_size=8, sink_tokens=2)
    step = DecodeStep(model)
    assert step.kind == "native"
    sink = model.new_cache(1, kind="sink")
    assert not step.native.serves(sink)
    with torch.no_grad():
        model(torch.tensor([list(range(5))]), sink, logits_to_keep=1)
        got = step(torch.tensor([[7]]), torch.tensor([[5]]), sink)  # the modules' step
    assert got.shape == (1, 256)


def test_the_engines_paged_cache_gives_the_modules_logits_and_pool():
    """Rows of different lengths in scattered blocks of one pool (the engine's layout): the
    native step reads each row's keys through its block table and writes the new ones where
    the modules write them."""
    from llm_infer.paged import BlockPool, PagedKVCache

    model = make_model().fuse_projections()
    decoder = NativeDecoder.for_model(model)
    pools = [
        BlockPool(n_layer=2, n_kv_head=2, head_dim=32, num_blocks=12, block_size=4)
        for _ in range(2)
    ]
    tables = [[5, 2, 9, 7], [1, 10, 4]]  # room for 16 and 12 tokens
    prompts = [list(range(3, 14)), list(range(40, 46))]  # 11 and 6 tokens
    lengths = [len(p) for p in prompts]
    worst = 0.0
    with torch.no_grad():
        for pool in pools:
            for table, prompt in zip(tables, prompts, strict=True):
                cache = PagedKVCache(pool, [table], [0])
                model(torch.tensor([prompt]), cache, torch.arange(len(prompt)).unsqueeze(0))
        tokens = torch.tensor([[prompts[0][-1]], [prompts[1][-1]]])
        for _ in range(4):
            position = torch.tensor(lengths).unsqueeze(1)  # (2, 1)
            native_view = PagedKVCache(pools[0], tables, lengths)
            assert decoder.serves(native_view)
            ours = decoder(tokens, position, native_view)  # (2, V)
            theirs = model(tokens, PagedKVCache(pools[1], tables, lengths), position)[:, -1]
            worst = max(worst, ((ours - theirs).abs().max() / theirs.abs().max()).item())
            tokens = theirs.argmax(-1, keepdim=True)
            lengths = [n + 1 for n in lengths]
    assert worst < 1e-5, worst
    assert torch.equal(pools[0].positions, pools[1].positions)
    torch.testing.assert_close(pools[0].k, pools[1].k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pools[0].v, pools[1].v, atol=1e-5, rtol=1e-5)


def test_the_op_rejects_paged_slots_outside_the_pool():
    model = make_model()
    decoder = NativeDecoder.for_model(model)
    ((_, _, w),) = decoder.runs
    pool = torch.zeros(2, 2, 8, 32)  # (L, H_kv, P, D)
    x, cos, sin = torch.zeros(2, 1, 128), torch.zeros(2, 16), torch.zeros(2, 16)
    mask = torch.ones(2, 1, 1, 3, dtype=torch.bool)
    weights = [w["attn_norms"], w["mlp_norms"], 1e-5, w["qkv"], w["qkv_formats"], w["o"]]
    weights += [w["o_formats"], w["gate_up"], w["gate_up_formats"], w["down"], w["down_formats"]]
    op = torch.ops.llm_kernels.decode_layers.default
    args = [x, *weights, pool.unbind(0), pool.clone().unbind(0), -1, cos, sin, mask, 4, 2, 0.125]
    slots, write = torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([2, 5])
    op(*args, slots, write)  # fits
    with pytest.raises(RuntimeError, match="slot 8 outside a pool of 8"):
        op(*args, torch.tensor([[0, 1, 2], [3, 4, 8]]), write)
    with pytest.raises(RuntimeError, match="write slot -1 outside a pool of 8"):
        op(*args, slots, torch.tensor([2, -1]))
    with pytest.raises(RuntimeError, match="needs both slots and write"):
        op(*args, slots, None)
    with pytest.raises(RuntimeError, match=r"does not fit \[B\|1, 1, 1, 3\]"):
        op(*args[:-4], torch.ones(2, 1, 1, 4, dtype=torch.bool), 4, 2, 0.125, slots, write)


def test_the_op_names_a_bad_argument():
    model = make_model()
    decoder = NativeDecoder.for_model(model)
    cache = model.new_cache(1, capacity=8)
    ((_, _, w),) = decoder.runs
    x = torch.zeros(1, 1, 128)
    cos = sin = torch.zeros(1, 16)
    mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    weights = [w["attn_norms"], w["mlp_norms"], 1e-5, w["qkv"], w["qkv_formats"], w["o"]]
    weights += [w["o_formats"], w["gate_up"], w["gate_up_formats"], w["down"], w["down_formats"]]
    args = [*weights, cache.k, cache.v]
    op = torch.ops.llm_kernels.decode_layers.default
    with pytest.raises(RuntimeError, match="slot 8 outside a cache of 8"):
        op(x, *args, 8, cos, sin, mask, 4, 2, 0.125)
    with pytest.raises(RuntimeError, match="cos and sin must be float32"):
        op(x, *args, 0, torch.zeros(1, 3), sin, mask, 4, 2, 0.125)
    with pytest.raises(RuntimeError, match="x must be float32"):
        op(torch.zeros(1, 2, 128), *args, 0, cos, sin, mask, 4, 2, 0.125)
    with pytest.raises(RuntimeError, match="one entry per layer"):
        op(x, *weights, cache.k[:1], cache.v, 0, cos, sin, mask, 4, 2, 0.125)
    with pytest.raises(RuntimeError, match="qkv needs 1 or 3 weights per layer"):
        bad = [*weights[:3], w["qkv"][:-1], w["qkv_formats"][:-1], *weights[5:]]
        op(x, *bad, cache.k, cache.v, 0, cos, sin, mask, 4, 2, 0.125)
    norm, head = model.model.norm.weight.detach(), model.lm_head.weight.detach()
    with pytest.raises(RuntimeError, match="the final norm and the head come together"):
        op(x, *args, 0, cos, sin, mask, 4, 2, 0.125, None, None, norm, None)
    with pytest.raises(RuntimeError, match="final norm's weight must be float32"):
        op(x, *args, 0, cos, sin, mask, 4, 2, 0.125, None, None, norm[:-1], head)
    with pytest.raises(RuntimeError, match="float head must be float32 with 128 inputs"):
        op(x, *args, 0, cos, sin, mask, 4, 2, 0.125, None, None, norm, head[:, :-1].contiguous())
