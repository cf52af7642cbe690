"""The llm-infer console script: generate, bench --json, one-line errors."""

from __future__ import annotations

import json

from llm_infer.cli import main


def test_generate_prints_the_completion(llama_dir, capsys, llm):
    want = llm.generate("def f", temperature=0, max_tokens=8).text
    assert (
        main(
            [
                "generate",
                "--model",
                str(llama_dir),
                "--prompt",
                "def f",
                "--temperature",
                "0",
                "--max-tokens",
                "8",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == want + "\n"
    assert (
        main(
            [
                "generate",
                "--model",
                str(llama_dir),
                "--prompt",
                "def f",
                "--temperature",
                "0",
                "--max-tokens",
                "8",
                "--stream",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == want + "\n"


def test_bench_json(llama_dir, capsys):
    args = [
        "bench",
        "--model",
        str(llama_dir),
        "--prompt-len",
        "8",
        "--new-tokens",
        "4",
        "--concurrency",
        "1,2",
        "--json",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["concurrency"] for row in result["engine"]] == [1, 2]
    assert result["single"]["decode_tokens_per_s"] > 0 and result["peak_rss_mb"] > 0


def test_errors_are_one_line_without_traceback(tmp_path, capsys, llama_dir):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llm-infer: error: ") and "no such model directory" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["generate", "--model", str(llama_dir), "--prompt", "x", "--top-p", "7"]) == 1
    assert "top_p must be a number in (0, 1]" in capsys.readouterr().err
    assert main(["bench", "--model", str(llama_dir), "--concurrency", "a"]) == 1
    assert "--concurrency" in capsys.readouterr().err


def test_kernel_build_notice_reaches_stderr_once(capsys):
    """The first load on a machine waits while llm-kernels compiles: the CLI says so."""
    import logging

    from llm_infer import show_kernel_notices

    logger = logging.getLogger("llm_kernels")
    handlers, level = list(logger.handlers), logger.level
    try:
        show_kernel_notices()
        show_kernel_notices()  # main() may run more than once in a process
        logging.getLogger("llm_kernels.native").info("llm_kernels: compiling (test)")
        assert capsys.readouterr().err == "llm_kernels: compiling (test)\n"
    finally:
        logger.handlers[:], logger.level = handlers, level
