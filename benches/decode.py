"""Decode benchmark: llm-infer vs HF transformers (eager) vs llama.cpp (F32 GGUF), side by side.

    uv run --frozen --group peers python benches/decode.py [--model smollm2] [--threads 2] [--repeats 3] [--json]

One process, one set of weights: random ones in the llama-125m shape (configs/llama-125m.yaml,
the default) or SmolLM2-135M-Instruct's, dequantized to float (``--model smollm2``); a
32-token prompt then 128 greedy tokens. Every engine gets the same weights: HF's
LlamaForCausalLM through load_state_dict, llama.cpp through an F32 GGUF written here with
gguf.GGUFWriter (q/k permuted to llama.cpp's interleaved RoPE layout, a placeholder gpt2
vocabulary) and an F32 KV cache. The engines run round-robin (best of --repeats each) and
their greedy tokens are compared; llm-infer runs its default ``LLM.generate`` (the native
decode step, for a Llama-style model) and the eager one (``compile=False``), and its Engine as
llm-serve runs it: requests (1 or 8 at once, each with a prompt of its own) through an engine
already running and warmed up (see ``engine_run``). The ratios the project tracks: default
``LLM.generate`` / llama.cpp F32, Engine with 1 stream / default ``LLM.generate``, Engine with
8 streams / 1 stream: from each side's best of the run, and round by round (the two sides
run back to back in every round; the median of the rounds' ratios is the figure that noise
moves least). Also measured in the same run: the model's
matrix products alone, as decode calls them (the floor for any engine built on them), the read
bandwidth of a buffer as large as the weights read per token, hence the memory-bandwidth limit
on tokens/s and each engine's fraction of it.
Prints a table and appends one JSON line to .bench/decode.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import llm_kernels
import numpy as np
import torch
from llm_core import ModelConfig, Transformer
from llm_infer import LLM
from llm_infer.bench import ServedEngine, greedy, random_prompt
from llm_tokenizer import Tokenizer, bytes_to_unicode

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "llama-125m.yaml"


def placeholder_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level vocabulary of ``vocab_size`` ids: the 256 bytes, then filler tokens."""
    byte_chars = bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)] + [f"<t{i}>" for i in range(256, vocab_size)]
    return Tokenizer(tokens, [])


def build_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_file(CONFIG)).eval()


# -- peers ------------------------------------------------------------------------------------


def hf_model(model: Transformer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    hf = LlamaForCausalLM(config).eval()
    hf.load_state_dict(model.state_dict(), strict=False)
    return hf


def permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split RoPE rows to llama.cpp's interleaved pairs (convert_hf_to_gguf's permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(model: Transformer, tokenizer: Tokenizer, path: Path) -> None:
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llm-bench")
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokenizer.tokens))
    writer.add_token_merges([f"{bytes_to_unicode()[ord('<')]} {bytes_to_unicode()[ord('t')]}"])
    writer.add_bos_token_id(cfg.vocab_size - 2)
    writer.add_eos_token_id(cfg.vocab_size - 1)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            w = state[f"model.layers.{i}.{ours}.weight"]
            if theirs == "attn_q":
                w = permute_for_gguf(w, cfg.n_head)
            elif theirs == "attn_k":
                w = permute_for_gguf(w, cfg.kv_heads)
            writer.add_tensor(f"blk.{i}.{theirs}.weight", np.ascontiguousarray(w))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor(
        "output.weight", state.get("lm_head.weight", state["model.embed_tokens.weight"])
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# -- timed runs -------------------------------------------------------------------------------


def best_of(repeats: int, fn):
    """(result of the fastest call, its seconds)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, result = elapsed, out
    return result, best


def read_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes/s of reading a float32 buffer of ``nbytes``: the best of a sum and a matrix-vector
    product (decode's own access pattern) over ``repeats`` tries each."""
    buf = torch.ones(nbytes // 4 // 4096, 4096)  # (rows, 4096)
    ones = torch.ones(4096)  # (4096,)
    _, sum_s = best_of(repeats, lambda: float(buf.sum()))
    _, mv_s = best_of(repeats, lambda: torch.mv(buf, ones))
    return buf.numel() * 4 / min(sum_s, mv_s)


def linear_floor(model: Transformer, n_new: int, *, blas: bool = False):
    """A function that runs only the model's matrix products (the fused q/k/v and gate/up,
    o, down and the LM head) for ``n_new`` tokens, one row each: through
    ``llm_kernels.linear`` as decode calls them (the floor for an engine built on them), or
    with ``blas=True`` through torch's ``F.linear`` on input-major copies of the weights
    (torch's BLAS in its fastest layout for one row, on 2 MiB pages as the model's)."""
    weights = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        weights += [attn.qkv.weight, attn.o_proj.weight, mlp.gate_up.weight, mlp.down_proj.weight]
    weights.append(model.lm_head.weight)
    if blas:
        # on huge pages too, as the model's own weights (llm_kernels.huge_pages)
        weights = [llm_kernels.huge_pages(w.detach().t().contiguous()).t() for w in weights]
    product = torch.nn.functional.linear if blas else llm_kernels.linear
    inputs = {w.shape[1]: torch.randn(1, 1, w.shape[1]) for w in weights}  # (1, 1, in)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(n_new):
                for w in weights:
                    product(inputs[w.shape[1]], w)

    return run


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def llama_cpp_runner(path: Path, prompt: list[int], n_new: int, threads: int):
    """A function that generates ``n_new`` greedy tokens with llama.cpp from ``path``."""
    from llama_cpp import Llama

    cpp = Llama(
        model_path=str(path),
        n_ctx=len(prompt) + n_new + 8,
        n_batch=len(prompt),
        n_threads=threads,
        n_threads_batch=threads,
        type_k=0,  # GGML_TYPE_F32: an F32 KV cache like ours (llama.cpp's default is F16)
        type_v=0,
        verbose=False,
    )

    def run() -> list[int]:
        # Forget the last run's tokens: generate() otherwise reuses the KV of the longest
        # common prefix (all but one prompt token), a prefill the other engines pay for.
        cpp.reset()
        out = []
        for token in cpp.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == n_new:
                break
        return out

    return run


def hf_runner(model: Transformer, prompt: list[int], n_new: int):
    """A function that generates ``n_new`` greedy tokens with HF's eager ``generate``."""
    hf = hf_model(model)
    ids = torch.tensor([prompt])  # (1, T)

    def run() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(
                ids, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0
            )  # (1, T + n_new)
        return out[0, len(prompt) :].tolist()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each engine's best counts")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument(
        "--model",
        choices=("llama-125m", "smollm2"),
        default="llama-125m",
        help="random llama-125m-shaped weights, or SmolLM2-135M-Instruct's (float)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the JSON line instead of a table"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_new = args.new_tokens

    if args.model == "smollm2":
        from llm_infer.load import smollm2_path
        from llm_quant.gguf import load_gguf_model

        model, _ = load_gguf_model(smollm2_path(), quantized=False)  # float weights, tied head
    else:
        model = build_model()
    cfg = model.config
    tokenizer = placeholder_tokenizer(cfg.vocab_size)
    llm = LLM(model, tokenizer, source=args.model)  # the default: what users run
    eager = LLM(model, tokenizer, source=args.model, compile=False)
    prompt = random_prompt(cfg.vocab_size, args.prompt_len, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama-125m-f32.gguf"
        write_gguf(model, tokenizer, path)
        runners = {
            "llm-infer LLM.generate": lambda: llm.generate(prompt, **greedy(n_new)).token_ids,
            "llm-infer LLM.generate, eager": lambda: (
                eager.generate(prompt, **greedy(n_new)).token_ids
            ),
            "HF transformers eager generate": hf_runner(model, prompt, n_new),
            "llama.cpp F32 GGUF": llama_cpp_runner(path, prompt, n_new, args.threads),
        }
        for run in runners.values():
            run()  # warm-up: first-call allocations, page faults of the weights, compilation

        def engine_run(streams: int) -> dict:
            # requests through a running engine, as llm-serve's, warmed by two-token requests
            # first (its worker's first steps build the worker's OpenMP team); the engine
            # exists for its own task only: beside an idle engine, llama.cpp ran at 0.6x its
            # speed on a 2-core VM (most likely libgomp, which torch shares with llama.cpp's
            # build, spinning less once it manages more threads than there are cores)
            with ServedEngine(llm, max_batch=args.streams) as served:
                served.measure(args.prompt_len, 2, streams)
                return served.measure(args.prompt_len, n_new, streams)

        runners["matrix products alone"] = linear_floor(model, n_new)
        runners["matrix products alone, torch BLAS"] = linear_floor(model, n_new, blas=True)
        rows = {name: {"seconds": float("inf")} for name in runners}
        engine_runs: dict[int, list[dict]] = {1: [], args.streams: []}
        rounds: list[dict[str, float]] = []  # each round's seconds, for paired ratios
        # Round-robin, so that load from elsewhere (this VM's neighbours move every figure by
        # tens of percent, in bursts shorter than a run) hits all alike. The tasks of each
        # tracked ratio run back to back (llama.cpp, LLM.generate, the engine's 1 and N
        # streams), forwards in even rounds and backwards in odd ones, so that both sides of
        # a ratio meet the same moment and each side goes first as often (a run right after
        # the 8-stream engine measured 16% slower than after a pause on a Zen 4 VM); the
        # other tasks follow, one later each round.
        paired = [
            "llama.cpp F32 GGUF",
            "llm-infer LLM.generate",
            *(f"engine {n}" for n in engine_runs),
        ]
        others = [name for name in runners if name not in paired]
        for r in range(args.repeats):
            times: dict[str, float] = {}
            group = paired if r % 2 == 0 else paired[::-1]
            for name in group + others[r % len(others) :] + others[: r % len(others)]:
                if name.startswith("engine "):
                    streams = int(name.split()[1])
                    run = engine_run(streams)
                    engine_runs[streams].append(run)
                    times[name] = run["wall_s"]
                    continue
                tokens, seconds = best_of(1, runners[name])
                times[name] = seconds
                if seconds < rows[name]["seconds"]:
                    rows[name] = {"seconds": seconds, "tokens": tokens}
            rounds.append(times)
    for row in rows.values():
        row["tokens_per_s"] = n_new / row["seconds"]

    weight_bytes = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n
    )  # per token every weight is read once, the embedding table only one row ...
    head = model.lm_head.weight
    if head is model.model.embed_tokens.weight:  # ... unless it is the (tied) LM head too
        weight_bytes += head.numel() * head.element_size()
    bandwidth = read_bandwidth(weight_bytes, max(5, args.repeats))
    limit = bandwidth / weight_bytes

    single, many = (
        max(engine_runs[n], key=lambda r: r["aggregate_tokens_per_s"]) for n in (1, args.streams)
    )

    ours = rows["llm-infer LLM.generate"]
    result = {
        "bench": "decode",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()}-core {platform.machine()}",
        "load_average_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "threads": args.threads,
        "prompt_tokens": args.prompt_len,
        "new_tokens": n_new,
        "tokens_per_s": {k: v["tokens_per_s"] for k, v in rows.items()},
        "vs_hf": ours["tokens_per_s"] / rows["HF transformers eager generate"]["tokens_per_s"],
        "vs_llama_cpp": ours["tokens_per_s"] / rows["llama.cpp F32 GGUF"]["tokens_per_s"],
        "vs_llama_cpp_eager": rows["llm-infer LLM.generate, eager"]["tokens_per_s"]
        / rows["llama.cpp F32 GGUF"]["tokens_per_s"],
        "model": args.model,
        "default_compiled": llm.step.compiled is not None,
        "greedy_agreement": {
            k: agreement(ours["tokens"], v["tokens"]) for k, v in rows.items() if v["tokens"]
        },
        "weight_bytes_per_token": weight_bytes,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_limit_tokens_per_s": limit,
        "fraction_of_limit": {k: v["tokens_per_s"] / limit for k, v in rows.items()},
        "engine_1_stream_tokens_per_s": single["aggregate_tokens_per_s"],
        "engine_streams": args.streams,
        "engine_n_streams_tokens_per_s": many["aggregate_tokens_per_s"],
        "streams_speedup": many["aggregate_tokens_per_s"] / single["aggregate_tokens_per_s"],
        "engine_1_vs_llm_generate": single["aggregate_tokens_per_s"] / ours["tokens_per_s"],
        # the same ratios round by round (both figures of a ratio from one round)
        "rounds": {
            "vs_llama_cpp": [t["llama.cpp F32 GGUF"] / t["llm-infer LLM.generate"] for t in rounds],
            "engine_1_vs_llm_generate": [
                t["llm-infer LLM.generate"] / t["engine 1"] for t in rounds
            ],
            "streams_speedup": [
                args.streams * t["engine 1"] / t[f"engine {args.streams}"] for t in rounds
            ],
        },
    }
    out_dir = ROOT / ".bench"
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / "decode.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"decode: {args.model}, {args.prompt_len}-token prompt + "
        f"{n_new} greedy tokens, {args.threads} threads"
    )
    for column in ("engine", "tokens/s", "ours / it", "of bandwidth limit", "greedy agreement"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for name, row in rows.items():
        table.add_row(
            name,
            f"{row['tokens_per_s']:.1f}",
            f"{ours['tokens_per_s'] / row['tokens_per_s']:.2f}",
            f"{row['tokens_per_s'] / limit:.0%}",
            f"{agreement(ours['tokens'], row['tokens'])}/{n_new}" if row["tokens"] else "",
        )
    table.add_row(
        "llm-infer Engine, 1 stream",
        f"{single['aggregate_tokens_per_s']:.1f}",
        f"{ours['tokens_per_s'] / single['aggregate_tokens_per_s']:.2f}",
        "",
        "",
    )
    table.add_row(
        f"llm-infer Engine, {args.streams} streams (sum)",
        f"{many['aggregate_tokens_per_s']:.1f}",
        "",
        "",
        "",
    )
    Console().print(table)
    print(
        f"weights read per token {weight_bytes / 1e6:.0f} MB; read bandwidth {bandwidth / 1e9:.1f} GB/s "
        f"-> limit {limit:.1f} tokens/s; default LLM.generate vs llama.cpp: {result['vs_llama_cpp']:.2f}x; "
        f"Engine 1 stream vs LLM.generate: {result['engine_1_vs_llm_generate']:.2f}x; "
        f"{args.streams} streams vs 1: {result['streams_speedup']:.2f}x; "
        f"load average {result['load_average_1m']:.2f}"
    )
    print(
        "round by round (median, range): "
        + "; ".join(
            f"{name} {statistics.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})"
            for name, v in result["rounds"].items()
        )
    )


if __name__ == "__main__":
    main()
