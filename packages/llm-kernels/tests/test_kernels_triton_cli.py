"""`llm-kernels check` and `bench`: their tables, exit codes and one-line errors."""

from __future__ import annotations

import os

import pytest
import torch
from llm_kernels.cli import main


def test_check_on_cpu_runs_every_op_under_the_interpreter(monkeypatch, capsys):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["check", "--device", "cpu", "--dtype", "float32"]) == 0
    assert "TRITON_INTERPRET" not in os.environ  # switched on for the checks only
    out = capsys.readouterr().out
    assert "Triton interpreter" in out and "all 14 checks within tolerance" in out
    for op in ("attention prefill", "attention decode (ring)", "rope backward", "add_rms_norm",
               "rms_norm backward", "W8A8 int8", "W4A16 q4 g128 mins", "Q4_1"):  # fmt: skip
        assert op in out


def test_check_reports_a_kernel_beyond_tolerance(monkeypatch, capsys):
    pytest.importorskip("triton")
    import llm_kernels.check as check

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(check, "TOLERANCES", dict.fromkeys(check.TOLERANCES, -1.0))
    monkeypatch.setattr(check, "_cases", lambda device, dtype, big: iter(
        [("rms_norm", lambda: (torch.ones(3), torch.ones(3)))]))  # fmt: skip
    assert main(["check", "--device", "cpu", "--dtype", "float16"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "1 of 1 checks beyond tolerance" in captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_a_one_line_error(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --device cuda: no CUDA device here"


@pytest.mark.slow
def test_bench_on_cpu_prints_the_quantized_paths_against_float32_linear(capsys):
    assert main(["bench", "--device", "cpu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "quant_linear Q4_0" in out and "F.linear fp32" in out and "x  " in out


@pytest.mark.slow
def test_every_kernel_launch_compiles_for_sm_90_without_a_gpu(monkeypatch, capsys):
    # the interpreter never sees what only the compiler rejects (a non-constexpr global, a
    # dtype tl.dot cannot take, too much shared memory): triton's own compiler does
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["check", "--compile-only", "90"]) == 0
    out = capsys.readouterr().out
    for kernel in ("_attention_fwd", "_rope_fwd", "_rms_norm_bwd", "_dequant_matmul",
                   "_int8_matmul", "_quantize_rows"):  # fmt: skip
        assert f"ok   {kernel}" in out
