"""The native small-row linear kernel against torch's F.linear (float64), its dispatch, its
build, and its use inside torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from llm_kernels import decode_weight_layout, linear, native

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


def _calls(fn) -> int:
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "llm_kernels::linear_rows")


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


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """``native`` as before its first load, with an empty cache directory."""
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setattr(native, "error", None)
    monkeypatch.setenv("LLM_KERNELS_CACHE", str(tmp_path))
    return tmp_path


def test_disabled_by_environment_means_f_linear_without_a_warning(fresh, monkeypatch, caplog):
    monkeypatch.setenv("LLM_KERNELS_NATIVE", "0")
    w = torch.randn(4, 8)
    with torch.inference_mode():
        assert _calls(lambda: linear(torch.ones(1, 8), w)) == 0
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
        "llm_kernels: native CPU kernels unavailable (false failed on linear_rows.cpp: exit 1);"
        " using torch's ops"
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
