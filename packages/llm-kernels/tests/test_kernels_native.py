"""The native kernels against references in float64 (torch's F.linear, HF transformers' eager
attention), their dispatch, their build, and their use inside torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from llm_kernels import attention, attention_mask, decode_weight_layout, linear, native

needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native kernels unavailable: {native.error}"
)


def _reference(x, w, b=None):
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


@needs_native
@pytest.mark.parametrize("rows", list(range(1, native.MAX_ROWS + 1)))
@pytest.mark.parametrize("out_in", [(1280, 768), (37, 50), (5, 16), (3, 7), (1, 1)])
def test_linear_rows_matches_float64_linear(rows, out_in):
    torch.manual_seed(rows)
    out, inp = out_in
    x, w, b = torch.randn(rows, inp), torch.randn(out, inp), torch.randn(out)
    got = torch.ops.llm_kernels.linear_rows(x, w, b)
    torch.testing.assert_close(got, _reference(x, w, b), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        torch.ops.llm_kernels.linear_rows(x, w), _reference(x, w), atol=1e-4, rtol=1e-4
    )


@needs_native
@pytest.mark.parametrize("rows", [1, 3])
def test_linear_rows_is_the_same_on_any_number_of_threads(rows):
    """Work is shared in chunks (the last one partial here) that threads take from each
    other: every output is still computed once, and bit for bit the same way."""
    torch.manual_seed(rows)
    x, w = torch.randn(rows, 300), torch.randn(1001, 300)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            results.append(torch.ops.llm_kernels.linear_rows(x, w))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(results[0], _reference(x, w), atol=1e-4, rtol=1e-4)
    for got in results[1:]:
        assert torch.equal(got, results[0])


@needs_native
@pytest.mark.parametrize("inp", [300, 768, 77])
def test_linear_rows_gives_a_row_alone_what_it_gives_it_in_a_batch(inp):
    """One input row takes its own code path (one weight row at a time): each output is still
    the same sum in the same order as in a batch, so a stream decodes the same tokens alone and
    beside others (the Engine's batches)."""
    torch.manual_seed(inp)
    x, w = torch.randn(native.MAX_ROWS, inp), torch.randn(261, inp)
    alone = [torch.ops.llm_kernels.linear_rows(x[r : r + 1], w)[0] for r in range(len(x))]
    for n in range(2, len(x) + 1):  # every remainder of the row tiles
        batch = torch.ops.llm_kernels.linear_rows(x[:n], w)
        for r in range(n):
            assert torch.equal(alone[r], batch[r]), (n, r)


@needs_native
def test_linear_rows_keeps_leading_dims_and_reads_strided_inputs():
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    x = torch.randn(2, 64, 3).transpose(1, 2)  # (2, 3, 64), not contiguous
    got = torch.ops.llm_kernels.linear_rows(x, w)
    assert got.shape == (2, 3, 96)
    torch.testing.assert_close(got, _reference(x, w), atol=1e-4, rtol=1e-4)


@needs_native
@pytest.mark.parametrize(
    ("x", "w", "message"),
    [
        (torch.randn(17, 8), torch.randn(4, 8), "1 to 16 input rows, got 17"),
        (torch.randn(1, 8), torch.randn(8, 4).t(), "row-major"),
        (torch.randn(1, 8).double(), torch.randn(4, 8).double(), "float32"),
        (torch.randn(1, 5), torch.randn(4, 8), "last dimension 5"),
    ],
)
def test_linear_rows_rejects_what_it_cannot_compute(x, w, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.llm_kernels.linear_rows(x, w)


def _calls(fn, op: str = "llm_kernels::linear_rows") -> int:
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == op)


@needs_native
def test_linear_dispatches_few_float32_rows_with_row_major_weights():
    torch.manual_seed(0)
    w, b = torch.randn(64, 32), torch.randn(64)
    with torch.inference_mode():
        assert _calls(lambda: linear(torch.randn(1, 1, 32), w, b)) == 1
        assert _calls(lambda: linear(torch.randn(native.MAX_ROWS, 32), w)) == 1
        assert _calls(lambda: linear(torch.randn(native.MAX_ROWS + 1, 32), w)) == 0
        assert _calls(lambda: linear(torch.randn(1, 32), w.t().contiguous().t())) == 0
        assert _calls(lambda: linear(torch.randn(1, 32).double(), w.double())) == 0
    x = torch.randn(2, 32, requires_grad=True)
    assert _calls(lambda: linear(x, w, b).sum().backward()) == 0  # gradients: F.linear
    torch.testing.assert_close(x.grad, w.sum(0).expand(2, 32))
    assert decode_weight_layout(w) == "row-major"
    assert decode_weight_layout(w.double()) == "input-major"


needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch without oneDNN"
)


@needs_onednn
def test_linear_takes_onednn_for_many_float32_rows_without_gradients():
    """A prompt's products (more rows than the native kernel takes) run oneDNN's, equal to
    F.linear in float64 up to float32 rounding; gradients, other dtypes and a few rows do not."""
    torch.manual_seed(0)
    w, b = torch.randn(96, 80), torch.randn(96)
    onednn = "mkldnn::_linear_pointwise"
    x = torch.randn(3, 40, 80)
    with torch.inference_mode():
        assert _calls(lambda: linear(x, w, b), onednn) == 1
        torch.testing.assert_close(linear(x, w, b), _reference(x, w, b), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            linear(x[:, ::2], w), _reference(x[:, ::2], w), atol=1e-4, rtol=1e-4
        )
        assert _calls(lambda: linear(torch.randn(native.MAX_ROWS, 80), w), onednn) == 0
        assert _calls(lambda: linear(x.double(), w.double()), onednn) == 0
    xg = x.clone().requires_grad_()
    assert _calls(lambda: linear(xg, w, b).sum().backward(), onednn) == 0
    torch.testing.assert_close(xg.grad, w.sum(0).expand(3, 40, 80))


@needs_onednn
def test_linear_falls_back_to_blas_when_onednn_refuses(monkeypatch):
    from llm_kernels import ops

    def refuse(*args):
        raise RuntimeError("oneDNN refuses")

    class Mkldnn:
        class _linear_pointwise:  # torch's name
            default = staticmethod(refuse)

    monkeypatch.setattr(ops, "_ONEDNN", [True])
    monkeypatch.setattr(torch.ops, "mkldnn", Mkldnn)
    x, w = torch.randn(40, 8), torch.randn(4, 8)
    with torch.inference_mode():
        torch.testing.assert_close(linear(x, w), _reference(x, w), atol=1e-5, rtol=1e-5)
    assert ops._ONEDNN == [False]  # not asked again


@needs_native
def test_linear_inside_torch_compile_runs_the_kernel_in_one_graph():
    torch.manual_seed(0)
    w1, w2 = torch.randn(128, 64), torch.randn(64, 128)

    def mlp(x):
        return linear(F.silu(linear(x, w1)), w2)

    compiled = torch.compile(mlp, fullgraph=True)
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        want = _reference(F.silu(_reference(x, w1)), w2)
        torch.testing.assert_close(compiled(x), want, atol=1e-4, rtol=1e-4)
        assert _calls(lambda: compiled(x)) == 2


ATTEND_CASES = {
    # name: (B, H, H_kv, T, S, D, window, sinks, scale)
    "decode, llama-125m heads": (1, 12, 4, 1, 160, 64, None, 0, None),
    "eight streams": (8, 12, 4, 1, 45, 64, None, 0, None),
    "few keys (under 4)": (2, 4, 2, 1, 3, 64, None, 0, None),
    "one key": (1, 4, 4, 1, 1, 32, None, 0, None),
    "head_dim with a tail": (2, 6, 2, 3, 37, 20, None, 0, None),
    "head_dim 128, long cache": (1, 8, 1, 1, 700, 128, None, 0, None),
    "window and sinks": (2, 4, 2, 4, 50, 16, 8, 2, None),
    "sixteen queries": (1, 4, 2, 16, 40, 64, None, 0, None),
    "peaked scores": (1, 4, 4, 2, 64, 64, None, 0, 4.0),
}


@needs_native
@pytest.mark.parametrize("case", list(ATTEND_CASES))
def test_attend_rows_matches_hf_eager_attention(case, hf_attention):
    B, H, H_kv, T, S, D, window, sinks, scale = ATTEND_CASES[case]
    torch.manual_seed(len(case))
    q = torch.randn(B, H, T, D)
    # keys and values as a static cache holds them: slices of larger per-layer buffers
    k = torch.randn(B, H_kv, S + 9, D)[:, :, :S]
    v = torch.randn(B, H_kv, S + 9, D)[:, :, :S]
    k_pos = torch.arange(S).expand(B, S).clone()
    k_pos[0, : S // 3] = -1  # empty slots in the first row
    q_pos = torch.arange(S - T, S).expand(B, T)
    mask = attention_mask(q_pos, k_pos, window=window, sink_tokens=sinks)  # (B, 1, T, S)
    scale = D**-0.5 if scale is None else scale
    got = torch.ops.llm_kernels.attend_rows(q, k, v, mask, scale)
    want = hf_attention(q, k, v, mask, scale)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    shared = mask[:1]  # one mask for every row: broadcast over the batch
    torch.testing.assert_close(
        torch.ops.llm_kernels.attend_rows(q, k, v, shared, scale),
        hf_attention(q, k, v, shared.expand(B, 1, T, S), scale),
        atol=2e-5,
        rtol=2e-5,
    )


@needs_native
def test_attend_rows_gives_zeros_to_a_query_that_sees_no_key(hf_attention):
    q, k, v = torch.randn(1, 2, 2, 16), torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 16)
    mask = attention_mask(torch.tensor([[0, 3]]), torch.tensor([[-1, -1, 1, 2, 3]]))
    got = torch.ops.llm_kernels.attend_rows(q, k, v, mask, 0.25)
    assert torch.all(got[:, :, 0] == 0)
    torch.testing.assert_close(got[:, :, 1], hf_attention(q, k, v, mask, 0.25)[:, :, 1])
    empty = torch.ops.llm_kernels.attend_rows(
        q, k[:, :, :0], v[:, :, :0], mask[..., :0], 0.25
    )  # no keys at all
    assert empty.shape == q.shape and torch.all(empty == 0)


@needs_native
@pytest.mark.parametrize("head_dim", [16, 64, 72])
def test_attend_rows_scores_a_key_alike_wherever_it_sits(head_dim):
    # keys are scored four at a time, with the last few one by one; both must end each sum
    # with the same tree of adds, so that a key's weight does not depend on its place: key 4
    # (scored alone) is key 0 (scored with 1-3), and one-hot values give out[s] = weight of s
    torch.manual_seed(0)
    q = torch.randn(1, 32, 1, head_dim)  # 32 heads share the key: 32 chances to differ
    k = torch.randn(1, 1, 5, head_dim)
    k[:, :, 4] = k[:, :, 0]
    v = torch.zeros(1, 1, 5, head_dim)
    v[0, 0, torch.arange(5), torch.arange(5)] = 1.0
    mask = torch.ones(1, 1, 1, 5, dtype=torch.bool)
    got = torch.ops.llm_kernels.attend_rows(q, k, v, mask, head_dim**-0.5)  # (1, 32, 1, D)
    weights = got[0, :, 0, :5]  # (32 heads, 5 keys)
    assert torch.equal(weights[:, 0], weights[:, 4]), (weights[:, 0] - weights[:, 4]).abs().max()
    torch.testing.assert_close(weights.sum(-1), torch.ones(32))
    assert len(set(weights[0].tolist())) == 4  # the others differ


@needs_native
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(1, 3, 1, 8), torch.randn(1, 2, 4, 8)), "disagree"),
        ((torch.randn(1, 2, 1, 8).double(), torch.randn(1, 2, 4, 8).double()), "float32"),
        ((torch.randn(1, 2, 1, 8), torch.randn(1, 2, 8, 4).transpose(2, 3)), "unit stride"),
    ],
)
def test_attend_rows_rejects_what_it_cannot_compute(args, message):
    q, k = args
    mask = torch.ones(1, 1, 1, k.shape[2], dtype=torch.bool)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.llm_kernels.attend_rows(q, k, k, mask, 1.0)
    one_key = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="mask"):
        torch.ops.llm_kernels.attend_rows(
            torch.randn(1, 2, 1, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), one_key, 1.0
        )  # 1 key in the mask, 4 in the cache


@needs_native
def test_attention_dispatches_decode_to_the_kernel():
    torch.manual_seed(0)
    k, v = torch.randn(2, 2, 30, 16), torch.randn(2, 2, 30, 16)
    k_pos = torch.arange(30)

    def run(q, k=k, v=v):
        T = q.shape[2]
        return lambda: attention(q, k, v, torch.arange(30 - T, 30), k_pos)

    op = "llm_kernels::attend_rows"
    with torch.inference_mode():
        assert _calls(run(torch.randn(2, 4, 1, 16)), op) == 1
        assert _calls(run(torch.randn(2, 4, native.MAX_ROWS, 16)), op) == 1
        assert _calls(run(torch.randn(2, 4, native.MAX_ROWS + 1, 16)), op) == 0  # prefill: SDPA
        assert _calls(run(torch.randn(2, 4, 1, 16).double(), k.double(), v.double()), op) == 0
    q = torch.randn(2, 4, 1, 16, requires_grad=True)
    assert _calls(lambda: attention(q, k, v, torch.tensor([29]), k_pos).sum().backward(), op) == 0
    assert q.grad is not None  # gradients: torch's SDPA


@needs_native
def test_attention_inside_torch_compile_runs_the_kernel_in_one_graph(hf_attention):
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 6, 1, 32), torch.randn(1, 2, 20, 32), torch.randn(1, 2, 20, 32)
    q_pos, k_pos = torch.tensor([[19]]), torch.arange(20).unsqueeze(0)
    compiled = torch.compile(lambda *a: attention(*a, window=8), fullgraph=True)
    want = hf_attention(q, k, v, attention_mask(q_pos, k_pos, window=8), 32**-0.5)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(q, k, v, q_pos, k_pos), want, atol=2e-5, rtol=2e-5)
        assert _calls(lambda: compiled(q, k, v, q_pos, k_pos), "llm_kernels::attend_rows") == 1


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """``native`` as before its first load, with an empty cache directory."""
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setattr(native, "error", None)
    monkeypatch.setenv("LLM_KERNELS_CACHE", str(tmp_path))
    return tmp_path


def test_disabled_by_environment_means_torch_ops_without_a_warning(
    fresh, monkeypatch, caplog, hf_attention
):
    monkeypatch.setenv("LLM_KERNELS_NATIVE", "0")
    w = torch.randn(4, 8)
    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)
    q_pos, k_pos = torch.tensor([8]), torch.arange(9)
    with torch.inference_mode():
        assert _calls(lambda: linear(torch.ones(1, 8), w)) == 0
        assert _calls(lambda: attention(q, k, v, q_pos, k_pos), "llm_kernels::attend_rows") == 0
        want = hf_attention(q, k, v, attention_mask(q_pos, k_pos), 16**-0.5)
        torch.testing.assert_close(attention(q, k, v, q_pos, k_pos), want, atol=2e-5, rtol=2e-5)
    assert native.available() is False
    assert native.error == "disabled by LLM_KERNELS_NATIVE=0"
    assert decode_weight_layout(w) == "input-major"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_failed_build_warns_once_and_leaves_nothing_in_the_cache(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    y = [linear(torch.ones(1, 8), torch.ones(4, 8)) for _ in range(2)][-1]
    assert y.tolist() == [[8.0] * 4]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "llm_kernels: native CPU kernels unavailable (false failed on the native kernels'"
        " sources: exit 1); using torch's ops"
    ]
    assert list(fresh.iterdir()) == []


def test_missing_compiler_is_named(fresh, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert native.available() is False
    assert native.error == "no C++ compiler: 'no-such-compiler' is not on PATH"


@needs_native
def test_build_is_cached_by_source_torch_and_cpu(tmp_path):
    path = native.library_path("g++")
    assert path.exists() and path.parent == native.cache_dir()
    assert native.library_path("clang++") != path
