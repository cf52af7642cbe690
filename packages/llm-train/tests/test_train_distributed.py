"""Two gloo processes under torchrun (DDP and FSDP2) follow the single-process loss curve of the
same global batch, step by step, and write the same checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llm_core import load_model
from llm_train.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(
    tmp_path: Path, prepared: Path, make_config, read_losses, strategy: str
) -> None:
    single = make_config(tmp_path / "one.yaml", prepared, tmp_path / "one", max_steps=10)
    assert main(["pretrain", "--config", str(single), "--no-progress"]) == 0
    config = make_config(
        tmp_path / "two.yaml", prepared, tmp_path / "two", max_steps=10, distributed=strategy
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    command += ["-m", "llm_train.cli", "pretrain", "--config", str(config), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = read_losses(tmp_path / "one"), read_losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 11))
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-5, (step, one[step], two[step])
    a = load_model(tmp_path / "one" / "checkpoints" / "step-00000010").state_dict()
    b = load_model(tmp_path / "two" / "checkpoints" / "step-00000010").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
