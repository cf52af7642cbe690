"""The loop's parts: the loss mask, schedule, parameter groups, accumulation, early stopping,
checkpoint rotation, bf16, finetuning and evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from llm_core import ModelConfig, Transformer, load_model
from llm_tokenizer import Tokenizer
from llm_train.cli import main
from llm_train.config import RunConfig
from llm_train.data import prepare
from llm_train.loader import IGNORE_INDEX, BatchLoader, TokenShards
from llm_train.trainer import Trainer, lr_factor, param_groups

TINY = ModelConfig(vocab_size=320, n_embd=32, n_layer=1, n_head=2, max_seq_len=64)


def test_only_the_assistant_span_changes_the_gradient(tmp_path: Path, prepared: Path) -> None:
    tokenizer = Tokenizer.from_file(prepared / "tokenizer.json")
    messages = [
        {"role": "user", "content": "Where did the cat sit?"},
        {"role": "assistant", "content": "The cat sat on the mat."},
    ]
    chat = tmp_path / "one.jsonl"
    chat.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    prepare([chat], tmp_path / "d", tokenizer, val_fraction=0.0)
    shards = TokenShards(tmp_path / "d", "train")
    loader = BatchLoader(shards, shards.num_tokens - 1, 1, seed=0)
    x, y = loader.batch(0, slice(0, 1))  # the whole conversation as one window
    torch.manual_seed(0)
    model = Transformer(TINY)

    def grads(targets: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        logits = model(x)  # (1, T, V)
        F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
        ).backward()
        return [p.grad.clone() for p in model.parameters()]

    learned = (y != IGNORE_INDEX)[0]
    assert tokenizer.decode(y[0][learned].tolist()) == "The cat sat on the mat.<|im_end|>\n"
    base = grads(y)
    # The gradient reaches the logits of assistant targets only.
    model.zero_grad()
    logits = model(x)  # (1, T, V)
    logits.retain_grad()
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX).backward()
    per_position = logits.grad[0].abs().sum(-1)  # (T,)
    assert (per_position[~learned] == 0).all() and (per_position[learned] > 0).all()
    # Learning every token instead gives another gradient.
    full = grads(torch.cat([x[:, 1:], y[:, -1:]], dim=1))  # every token a target
    assert not all(torch.equal(a, b) for a, b in zip(base, full, strict=True))
    # An assistant token is a target: changing it changes the gradient.
    changed = y.clone()
    first = int(learned.nonzero()[0])
    changed[0, first] = (changed[0, first] + 1) % TINY.vocab_size
    assert not all(torch.equal(a, b) for a, b in zip(base, grads(changed), strict=True))


def test_lr_schedule_warmup_cosine_and_floor() -> None:
    assert lr_factor(1, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 100, 0.1) == pytest.approx(0.1)  # the floor holds past the end


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = Transformer(TINY.model_copy(update={"qkv_bias": True}))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 and "embed" not in names[id(p)] for p in decay["params"])
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "model.embed_tokens.weight" in skipped and "model.norm.weight" in skipped
    assert "model.layers.0.self_attn.q_proj.bias" in skipped
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_accumulation_matches_one_big_batch(
    tmp_path: Path, prepared: Path, make_config, read_losses
) -> None:
    for name, micro in (("big", 4), ("accum", 1)):
        config = make_config(
            tmp_path / f"{name}.yaml",
            prepared,
            tmp_path / name,
            max_steps=4,
            micro_batch_size=micro,
        )
        assert main(["pretrain", "--config", str(config), "--no-progress"]) == 0
    big, accum = read_losses(tmp_path / "big"), read_losses(tmp_path / "accum")
    for step in big:
        assert accum[step] == pytest.approx(big[step], abs=1e-5)


def test_checkpoints_rotate_and_metrics_have_every_field(
    tmp_path: Path, prepared: Path, make_config
) -> None:
    config = make_config(
        tmp_path / "c.yaml",
        prepared,
        tmp_path / "run",
        max_steps=12,
        checkpoint_every=2,
        keep_checkpoints=2,
        eval_every=4,
    )
    assert main(["pretrain", "--config", str(config), "--no-progress"]) == 0
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000010", "step-00000012"]
    assert (root / "latest").read_text().strip() == "step-00000012"
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= records[0].keys()
    evaluated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [4, 8, 12]
    assert evaluated[0]["val_ppl"] == pytest.approx(math.exp(evaluated[0]["val_loss"]))
    assert records[-1]["loss"] < records[0]["loss"]


def test_early_stopping_stops_and_checkpoints(tmp_path: Path, prepared: Path, make_config) -> None:
    # lr 0 (after warmup 0): the validation loss never improves after the first evaluation
    config = make_config(
        tmp_path / "c.yaml",
        prepared,
        tmp_path / "run",
        max_steps=50,
        lr=1e-9,
        warmup_steps=0,
        eval_every=2,
        early_stopping_patience=2,
        early_stopping_min_delta=1.0,
    )
    trainer = Trainer(RunConfig.from_file(config), progress=False)
    result = trainer.train()
    assert result.stopped_early and result.step == 6
    assert result.checkpoint is not None and result.checkpoint.name == "step-00000006"


def test_bf16_autocast_trains(tmp_path: Path, prepared: Path, make_config) -> None:
    config = make_config(
        tmp_path / "c.yaml", prepared, tmp_path / "run", max_steps=3, precision="bf16"
    )
    result = Trainer(RunConfig.from_file(config), progress=False).train()
    assert math.isfinite(result.loss)
    assert load_model(result.checkpoint).dtype == torch.float32  # fp32 master weights


def test_finetune_from_checkpoint_and_eval(
    tmp_path: Path, prepared: Path, make_config, capsys
) -> None:
    config = make_config(tmp_path / "p.yaml", prepared, tmp_path / "pre", max_steps=4)
    assert main(["pretrain", "--config", str(config), "--no-progress"]) == 0
    start = tmp_path / "pre" / "checkpoints" / "step-00000004"
    tuned = make_config(
        tmp_path / "f.yaml",
        prepared,
        tmp_path / "ft",
        max_steps=2,
        model=None,
        init_from=str(start),
    )
    assert main(["finetune", "--config", str(tuned), "--no-progress"]) == 0
    assert (tmp_path / "ft" / "checkpoints" / "step-00000002" / "model.safetensors").is_file()
    capsys.readouterr()
    assert (
        main(["eval", str(start), "--data", str(prepared), "--seq-len", "32", "--windows", "4"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-3)
    assert result["perplexity"] < result["unigram_perplexity"] * 10


def test_finetune_needs_init_from(tmp_path: Path, prepared: Path, make_config, capsys) -> None:
    config = make_config(tmp_path / "p.yaml", prepared, tmp_path / "run")
    assert main(["finetune", "--config", str(config)]) == 1
    assert "finetune needs init_from" in capsys.readouterr().err


def test_bad_run_config_is_one_line(tmp_path: Path, prepared: Path, make_config, capsys) -> None:
    config = make_config(
        tmp_path / "p.yaml", prepared, tmp_path / "run", batch_size=3, micro_batch_size=2
    )
    assert main(["pretrain", "--config", str(config)]) == 1
    assert (
        "batch_size / world size = 3 is not divisible by micro_batch_size 2"
        in capsys.readouterr().err
    )
    config = make_config(tmp_path / "q.yaml", prepared, tmp_path / "run", warmup=3)
    assert main(["pretrain", "--config", str(config)]) == 1
    assert "warmup: unknown field" in capsys.readouterr().err
