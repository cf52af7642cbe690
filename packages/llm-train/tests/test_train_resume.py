"""Exact resume: a run killed (SIGKILL) in the middle of a checkpoint write and resumed gives the
same losses as an uninterrupted run, and the latest checkpoint survives intact."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import torch
from llm_core import load_model
from llm_train.checkpoint import latest_checkpoint, load_trainer_state
from llm_train.cli import main

# Runs training in a child process whose torch.save writes half of the step-15 trainer state,
# then SIGKILLs its own process: a crash in the middle of a checkpoint write.
KILLER = """
import os, signal, sys, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == 15:
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from llm_train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_then_resume_matches_straight_run(
    tmp_path: Path, prepared: Path, make_config, read_losses
) -> None:
    straight = make_config(tmp_path / "a.yaml", prepared, tmp_path / "straight")
    assert main(["pretrain", "--config", str(straight), "--no-progress"]) == 0
    expected = read_losses(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 21))

    config = make_config(tmp_path / "b.yaml", prepared, tmp_path / "killed")
    args = ["pretrain", "--config", str(config), "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    root = tmp_path / "killed" / "checkpoints"
    assert (root / ".tmp-step-00000015").is_dir()  # the interrupted write
    latest = latest_checkpoint(tmp_path / "killed")
    assert latest == root / "step-00000010"
    assert load_trainer_state(latest)["step"] == 10
    load_model(latest)  # intact: config, weights and tokenizer read back

    assert main([*args, "--resume"]) == 0
    resumed = read_losses(tmp_path / "killed")
    assert resumed == expected  # steps 1-10 from the first process, 11-20 after the resume
    assert not (root / ".tmp-step-00000015").exists()
    a = load_model(tmp_path / "straight" / "checkpoints" / "step-00000020").state_dict()
    b = load_model(root / "step-00000020").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_resume_without_checkpoint_starts_fresh(
    tmp_path: Path, prepared: Path, make_config
) -> None:
    config = make_config(tmp_path / "c.yaml", prepared, tmp_path / "run", max_steps=2)
    assert main(["pretrain", "--config", str(config), "--no-progress", "--resume"]) == 0
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"


def test_resume_with_other_batch_size_is_refused(
    tmp_path: Path, prepared: Path, make_config, capsys
) -> None:
    config = make_config(tmp_path / "c.yaml", prepared, tmp_path / "run", max_steps=5)
    assert main(["pretrain", "--config", str(config), "--no-progress"]) == 0
    other = make_config(tmp_path / "d.yaml", prepared, tmp_path / "run", max_steps=8, batch_size=2)
    assert main(["pretrain", "--config", str(other), "--no-progress", "--resume"]) == 1
    assert "resume with the same seed, seq_len and batch_size" in capsys.readouterr().err
