"""The training loop: AdamW, cosine schedule with warmup and a floor, clipping, accumulation,
bf16 autocast, evaluation, early stopping, checkpoints and exact resume; DDP or FSDP2 under
``torchrun``.

The loss of a step is the mean over every learned target of the global batch, whatever the
split into processes and micro-batches: each micro-batch adds ``sum of its token losses /
targets in the global batch`` (times the world size, which DDP's and FSDP's gradient averaging
divides out), so one process and many give the same update.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from llm_core import CheckpointError, ModelConfig, Transformer, load_model
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llm_train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from llm_train.config import RunConfig
from llm_train.errors import RunConfigError, TrainError
from llm_train.loader import IGNORE_INDEX, BatchLoader, TokenShards, read_index

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # dense bf16


@dataclass
class World:
    """Where this process runs: its rank among ``size`` processes and its device."""

    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_world(device: str) -> World:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, dev)


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier of (1-based) ``step``: linear warmup, then cosine to ``min_ratio``."""
    if step <= warmup:
        return step / max(warmup, 1)
    progress = min((step - warmup) / max(max_steps - warmup, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices; none on norms, biases and embeddings (tied heads too)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed_tokens" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def flops_per_token(config: ModelConfig, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token (PaLM appendix B): ``6 N + 12 L H Q T``."""
    return 6 * n_params + 12 * config.n_layer * config.n_head * config.head_dim * seq_len


def peak_flops(device: torch.device, precision: str) -> float:
    """Peak FLOP/s of ``device``: a known GPU's dense bf16 figure, or a CPU's measured matmul rate."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops if precision == "bf16" else flops / 2
        return 100e12
    n = 1024
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


@dataclass
class TrainResult:
    """How a run ended."""

    step: int
    loss: float
    val_loss: float | None
    checkpoint: Path | None
    stopped_early: bool


class Trainer:
    """One run of a :class:`RunConfig`: ``Trainer(config).train()``."""

    def __init__(
        self,
        config: RunConfig,
        *,
        resume: bool = False,
        config_dir: Path = Path("."),
        progress: bool = True,
    ) -> None:
        """Build the model, optimizer and loader, from a checkpoint when resuming.

        Raises :class:`RunConfigError` for an inconsistent config, :class:`DataError` for bad
        data, :class:`TrainError` for an unreadable checkpoint.
        """
        self.cfg = cfg = config
        self.world = setup_world(cfg.device)
        self.out_dir = Path(cfg.out_dir)
        self.progress = progress and self.world.main
        self.micro, self.accum = cfg.micro_batches(self.world.size)
        index = read_index(cfg.data)
        self.tokenizer_json = Path(cfg.data) / index["tokenizer"]
        self.train_loader = BatchLoader(
            TokenShards(cfg.data, "train"), cfg.seq_len, cfg.batch_size, cfg.seed
        )
        val = TokenShards(cfg.data, "val")
        self.val_loader = (
            BatchLoader(val, cfg.seq_len, cfg.batch_size, cfg.seed)
            if val.num_tokens > cfg.seq_len
            else None
        )
        self.checkpoint = latest_checkpoint(self.out_dir) if resume else None
        state = load_trainer_state(self.checkpoint) if self.checkpoint else None
        raw = self._build_model(config_dir, index["vocab_size"])
        self.model_config = raw.config
        self.n_params = raw.num_parameters()
        self.model = self._wrap(raw.to(self.world.device))
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=self.world.device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda i: lr_factor(i + 1, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio),
        )
        self.step = 0
        self.best_val = math.inf
        self.bad_evals = 0
        if state is not None:
            self._restore(state)
        self.forward = torch.compile(self.model) if cfg.compile else self.model

    # -- construction -------------------------------------------------------------------

    def _build_model(self, config_dir: Path, vocab_size: int) -> Transformer:
        cfg = self.cfg
        source = self.checkpoint or (Path(cfg.init_from) if cfg.init_from else None)
        if source is not None:
            try:
                model = load_model(source, dtype=torch.float32)
            except CheckpointError as exc:
                raise TrainError(str(exc)) from None
            if model.config.vocab_size < vocab_size:
                raise RunConfigError(
                    f"{source}: the model's vocabulary ({model.config.vocab_size}) is smaller "
                    f"than the data's tokenizer ({vocab_size})"
                )
            return model.train()
        model_config = cfg.resolved_model(config_dir)
        assert model_config is not None  # RunConfig checks that one source is given
        model_config = model_config.model_copy(
            update={"vocab_size": vocab_size, "dtype": "float32"}
        )
        torch.manual_seed(cfg.seed)
        return Transformer(model_config).train()

    def _wrap(self, model: Transformer) -> torch.nn.Module:
        if self.world.size == 1:
            return model
        if self.cfg.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def _restore(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        self.train_loader.check_state(state["loader"])
        set_optimizer_state_dict(
            self.model,
            self.optimizer,
            state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.best_val = state["best_val"]
        self.bad_evals = state["bad_evals"]
        torch.set_rng_state(
            state["rng"]["torch"][min(self.world.rank, len(state["rng"]["torch"]) - 1)]
        )
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])

    # -- the loop -----------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Run until ``max_steps`` or early stopping; returns how it ended."""
        cfg = self.cfg
        metrics = self._open_metrics()
        tokens_per_step = cfg.batch_size * cfg.seq_len
        fpt = flops_per_token(self.model_config, cfg.seq_len, self.n_params)
        peak = (
            cfg.peak_tflops * 1e12
            if cfg.peak_tflops
            else peak_flops(self.world.device, cfg.precision)
        )
        loss = math.nan
        val_loss = None
        stopped = False
        saved: Path | None = None
        deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        with self._progress_bar() as (bar, task):
            while self.step < cfg.max_steps and not stopped:
                start = time.perf_counter()
                self.step += 1
                loss, grad_norm = self._train_step(self.step)
                elapsed = time.perf_counter() - start
                record: dict[str, Any] = {
                    "step": self.step,
                    "loss": loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_step / elapsed,
                    "mfu": fpt * tokens_per_step / elapsed / peak,
                }
                self.scheduler.step()
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    val_loss = self.evaluate()
                    if val_loss is not None:
                        record |= {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
                        stopped = self._early_stop(val_loss)
                if cfg.max_minutes is not None and self._out_of_time(deadline):
                    stopped = True
                last = self.step == cfg.max_steps or stopped
                if last and "val_loss" not in record and (val_loss := self.evaluate()) is not None:
                    record |= {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
                if self.step % cfg.checkpoint_every == 0 or last:
                    saved = self.save()
                if metrics is not None and (self.step % cfg.log_every == 0 or "val_loss" in record):
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if bar is not None:
                    bar.update(
                        task, completed=self.step, info=f"loss {loss:.4f} lr {record['lr']:.2e}"
                    )
        if metrics is not None:
            metrics.close()
        return TrainResult(self.step, loss, val_loss, saved, stopped)

    def _train_step(self, step: int) -> tuple[float, float]:
        cfg, world = self.cfg, self.world
        self.model.train()
        count = max(self.train_loader.target_count(step), 1)
        total = torch.zeros((), dtype=torch.float64)
        per_rank = self.micro * self.accum
        for i in range(self.accum):
            first = world.rank * per_rank + i * self.micro
            x, y = self.train_loader.batch(step, slice(first, first + self.micro))
            x, y = x.to(world.device), y.to(world.device)
            with self._no_sync(i < self.accum - 1), self._autocast():
                logits = self.forward(x)  # (B, T, V)
                loss_sum = F.cross_entropy(
                    logits.flatten(0, 1).float(),
                    y.flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                (loss_sum * (world.size / count)).backward()
            total += loss_sum.detach().double().cpu()
        if world.size > 1:
            dist.all_reduce(total)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total) / count, float(norm)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss (nats per target token) over ``eval_windows`` fixed windows."""
        if self.val_loader is None:
            return None
        self.model.eval()
        total, count = 0.0, 0
        for x, y in self.val_loader.eval_batches(self.cfg.eval_windows, self.micro):
            x, y = x.to(self.world.device), y.to(self.world.device)
            with self._autocast():
                logits = self.model(x)  # (B, T, V); eager: a compiled model would recompile
            total += float(
                F.cross_entropy(
                    logits.flatten(0, 1).float(),
                    y.flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            count += int((y != IGNORE_INDEX).sum())
        self.model.train()
        return total / max(count, 1)

    def _out_of_time(self, deadline: float) -> bool:
        """Rank 0's clock decides, so that every process stops at the same step."""
        flag = torch.tensor([time.monotonic() > deadline])
        if self.world.size > 1:
            dist.broadcast(flag, 0)
        return bool(flag)

    def _early_stop(self, val_loss: float) -> bool:
        if val_loss < self.best_val - self.cfg.early_stopping_min_delta:
            self.best_val, self.bad_evals = val_loss, 0
            return False
        self.bad_evals += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.bad_evals >= patience

    # -- checkpoints --------------------------------------------------------------------

    def save(self) -> Path | None:
        """Checkpoint the current step (all processes take part; rank 0 writes)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        rng = [torch.get_rng_state()]
        if self.world.size > 1:
            gathered: list[Any] = [None] * self.world.size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        path = None
        if self.world.main:
            with torch.device("meta"):
                export = Transformer(self.model_config)
            export.load_state_dict(weights, assign=True)
            if self.model_config.tie_embeddings:
                export.lm_head.weight = export.model.embed_tokens.weight
            state = {
                "step": self.step,
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "loader": self.train_loader.state_dict(),
                "rng": {
                    "torch": rng,
                    "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                },
                "best_val": self.best_val,
                "bad_evals": self.bad_evals,
                "run_config": self.cfg.model_dump(mode="json"),
            }
            path = save_checkpoint(
                self.out_dir,
                self.step,
                export,
                state,
                tokenizer_json=self.tokenizer_json,
                keep=self.cfg.keep_checkpoints,
            )
        if self.world.size > 1:
            dist.barrier()
        return path

    # -- helpers ------------------------------------------------------------------------

    def _open_metrics(self):
        """Open ``metrics.jsonl`` for appending, dropping lines past the resumed step (rank 0)."""
        if not self.world.main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        if path.exists():
            kept = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= self.step
            ]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return open(path, "a", encoding="utf-8")

    @contextmanager
    def _progress_bar(self) -> Iterator[tuple[Progress | None, Any]]:
        if not self.progress:
            yield None, None
            return
        columns = (
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("train", total=self.cfg.max_steps, completed=self.step, info="")
            yield bar, task

    def _autocast(self):
        if self.cfg.precision != "bf16":
            return nullcontext()
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16)

    def _no_sync(self, skip: bool):
        if not skip or self.world.size == 1:
            return nullcontext()
        if hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return _fsdp_no_sync(self.model)


@contextmanager
def _fsdp_no_sync(model: torch.nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def close_world() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
