"""The ``llm-serve`` console script: options to config, one-line errors, a real run (slow)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from llm_infer import LoadError, load
from llm_serve import cli


def test_options_become_the_server_config(checkpoint, monkeypatch):
    served = {}
    monkeypatch.setattr(
        cli, "run", lambda app, host, port: served.update(app=app, host=host, port=port)
    )
    monkeypatch.setenv("LLM_API_KEY", "from-env")
    argv = [
        "--model",
        str(checkpoint),
        "--port",
        "9123",
        "--max-batch",
        "2",
        "--max-queue",
        "3",
        "--cors-origin",
        "http://a.example",
        "--max-tokens",
        "77",
    ]
    assert cli.main(argv) == 0
    config = served["app"].state.server.config
    assert (served["host"], served["port"]) == ("127.0.0.1", 9123)
    assert config.model_name == "ckpt" and config.api_key == "from-env"
    assert (config.max_batch, config.max_queue, config.max_tokens_cap) == (2, 3, 77)
    assert config.cors_origins == ("http://a.example",)


def test_bad_model_is_one_line_and_non_zero(capsys, tmp_path):
    assert cli.main(["--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm-serve: error:") and "\n" not in err


def test_the_default_model_is_smollm2_and_demo_serves_the_toy(capsys, monkeypatch):
    assert cli.build_parser().parse_args([]).model == "smollm2"
    try:
        load("demo")
    except LoadError:
        assert cli.main(["--model", "demo"]) == 1
        err = capsys.readouterr().err.strip()
        assert "demo" in err and "\n" not in err
    else:
        monkeypatch.setattr(cli, "run", lambda app, host, port: None)
        assert cli.main(["--model", "demo"]) == 0


@pytest.mark.slow
def test_console_script_serves(checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLM_API_KEY": "k"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_serve.cli", "--model", str(checkpoint), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert models["data"][0]["id"] == "ckpt"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
