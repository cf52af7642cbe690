"""Training throughput: llm-train's step against a plain HF transformers loop of the same shape.

    uv run --frozen python benches/train.py [--config configs/model_config.yaml] [--seq-len 256]

Ours: ``llm_train.Trainer``'s real step (loader over memory-mapped shards, AdamW with its
parameter groups, clipping, the loss over the global batch), eager and ``torch.compile``d.
Reference: ``transformers.GPT2LMHeadModel`` with the same width, depth, heads, vocabulary and
4x GeLU MLP, tied embeddings, ``torch.optim.AdamW`` with the same settings, clipping, and the
textbook loop (forward with labels, backward, step). GPT-2 differs from our model in LayerNorm
vs RMSNorm, learned positions vs RoPE and a few biases: the same matmuls, within 0.5% of the
FLOPs. Tokens/s is the median over the measured steps; MFU divides the model FLOPs
(6N + 12LHQT per token) by this machine's measured fp32 matmul rate. Prints a table and appends
a JSON line to ``.bench/train.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from llm_core import ModelConfig, Transformer
from llm_train.config import RunConfig
from llm_train.trainer import Trainer, flops_per_token, peak_flops


def synthetic_data(directory: Path, vocab_size: int, tokens: int) -> Path:
    """A prepared directory of random tokens (no tokenizer needed: nothing is saved)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", tokens), ("val", 4096)):
        rng.integers(0, vocab_size, n, dtype=np.uint16).tofile(directory / f"{split}-00000.bin")
    index = {
        "format": "llm-train-shards",
        "format_version": 1,
        "dtype": "uint16",
        "vocab_size": vocab_size,
        "end_of_text_id": None,
        "has_mask": False,
        "tokenizer": "tokenizer.json",
        "splits": {
            split: {
                "documents": 1,
                "tokens": n,
                "shards": [{"tokens": f"{split}-00000.bin", "num_tokens": n}],
            }
            for split, n in (("train", tokens), ("val", 4096))
        },
        "skipped": [],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def time_steps(step, warmup: int, steps: int) -> list[float]:
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times


def ours(model: ModelConfig, data: Path, args, compile: bool) -> list[float]:
    config = RunConfig(
        model=model,
        data=str(data),
        out_dir=str(data / "run"),
        seq_len=args.seq_len,
        batch_size=args.batch,
        max_steps=10_000,
        warmup_steps=10,
        lr=3e-4,
        compile=compile,
        device="cpu",
    )
    trainer = Trainer(config, progress=False)

    def step(i: int) -> None:
        trainer._train_step(i + 1)
        trainer.scheduler.step()

    return time_steps(step, args.warmup + (1 if compile else 0), args.steps)


def reference(model: ModelConfig, args) -> list[float]:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=model.vocab_size,
            n_positions=args.seq_len,
            n_embd=model.n_embd,
            n_layer=model.n_layer,
            n_head=model.n_head,
            n_inner=model.ffn_dim,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).train()
    decay = [
        p for n, p in hf.named_parameters() if p.ndim >= 2 and "wte" not in n and "wpe" not in n
    ]
    rest = [
        p
        for n, p in hf.named_parameters()
        if not (p.ndim >= 2 and "wte" not in n and "wpe" not in n)
    ]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-4,
        betas=(0.9, 0.95),
    )
    rng = np.random.default_rng(0)

    def step(i: int) -> None:
        x = torch.from_numpy(rng.integers(0, model.vocab_size, (args.batch, args.seq_len + 1)))
        logits = hf(x[:, :-1]).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, args.warmup, args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/model_config.yaml", help="model config")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    args = parser.parse_args()
    model = ModelConfig.from_file(args.config)
    torch.manual_seed(0)
    n_params = Transformer(model).num_parameters()
    fpt = flops_per_token(model, args.seq_len, n_params)
    peak = peak_flops(torch.device("cpu"), "fp32")
    tokens = args.batch * args.seq_len
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(Path(tmp), model.vocab_size, 1 << 20)
        rows["HF transformers GPT2LMHeadModel, eager"] = reference(model, args)
        rows["llm-train Trainer, eager"] = ours(model, data, args, compile=False)
        if not args.no_compile:
            rows["llm-train Trainer, torch.compile"] = ours(model, data, args, compile=True)
    base = tokens / statistics.median(rows["HF transformers GPT2LMHeadModel, eager"])
    print(
        f"{args.config}: {n_params / 1e6:.1f}M parameters, batch {args.batch} x {args.seq_len}, "
        f"{torch.get_num_threads()} threads, measured fp32 peak {peak / 1e9:.0f} GFLOP/s"
    )
    print("| loop | s/step | tokens/s | MFU | vs HF |\n|---|---:|---:|---:|---:|")
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "config": args.config,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "peak_flops": peak,
        "rows": {},
    }
    for name, times in rows.items():
        median = statistics.median(times)
        rate = tokens / median
        mfu = fpt * rate / peak
        print(f"| {name} | {median:.2f} | {rate:.0f} | {mfu:.1%} | {rate / base:.2f}x |")
        record["rows"][name] = {"seconds": times, "tokens_per_s": rate, "mfu": mfu}
    Path(".bench").mkdir(exist_ok=True)
    with open(".bench/train.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
