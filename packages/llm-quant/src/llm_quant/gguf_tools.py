"""What ``llm-quant inspect`` and ``llm-quant validate`` compute: a GGUF file's description, and
our next-token logits and greedy tokens against llama.cpp's (llama-cpp-python) on that file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llm_quant.gguf import HEAD_ACTIVATIONS, GGUFError, GGUFFile, load_gguf_model

LONG_ARRAY = 8  # arrays longer than this are shown as their length and first few items
DEFAULT_PROMPT = "The capital of France is"


def abbreviate(value: Any, limit: int = LONG_ARRAY) -> Any:
    """A metadata value for display: long arrays cut to ``limit`` items plus a count."""
    if isinstance(value, list) and len(value) > limit:
        return {"length": len(value), "first": value[: limit // 2]}
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + f"... ({len(value)} characters)"
    return value


def describe(file: GGUFFile) -> dict[str, Any]:
    """A JSON-ready description: path, version, metadata (long arrays abbreviated), tensors
    (name, type, shape in torch order, bytes, offset) and the total tensor bytes."""
    tensors = [
        {
            "name": t.name,
            "type": t.type.name,
            "shape": list(t.shape),
            "bytes": t.n_bytes,
            "offset": t.offset,
        }
        for t in file.tensors.values()
    ]
    return {
        "path": str(file.path),
        "version": file.version,
        "file_bytes": file.path.stat().st_size,
        "metadata": {k: abbreviate(v) for k, v in file.metadata.items()},
        "tensor_count": len(tensors),
        "tensor_bytes": sum(t["bytes"] for t in tensors),
        "tensors": tensors,
    }


@dataclass(frozen=True)
class Validation:
    """Our model against llama.cpp's on one prompt (the same token ids for both).

    ``max_abs_diff``: the worst next-token logit difference; ``max_rel_diff``: that over the
    largest reference logit magnitude. ``agree``: how many leading greedy tokens are equal.
    ``tie_margin``: where the greedy tokens first differ, how far llama.cpp's own logit for its
    token leads its logit for ours, over its largest logit magnitude (``None`` when all agree):
    a fraction of a percent is a near-tie that rounding decides, not a defect.
    """

    prompt_ids: list[int]
    ours_next: int
    cpp_next: int
    max_abs_diff: float
    max_rel_diff: float
    ours_tokens: list[int]
    cpp_tokens: list[int]
    agree: int
    ours_text: str
    cpp_text: str
    tie_margin: float | None
    head_activations: str

    @property
    def next_token_matches(self) -> bool:
        return self.ours_next == self.cpp_next

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"next_token_matches": self.next_token_matches}


def validate(
    path: str | Path,
    prompt: str = DEFAULT_PROMPT,
    *,
    max_tokens: int = 16,
    threads: int | None = None,
    head_activations: str = HEAD_ACTIVATIONS,
) -> Validation:
    """Compare our model with llama.cpp's on ``path``: next-token logits after ``prompt`` and
    ``max_tokens`` greedy tokens. The prompt is tokenized once, by llama.cpp, so both run the
    same ids; llama.cpp keeps an F32 KV cache and evaluates one token at a time (``n_batch=1``,
    the setting its quantized kernels are stable with). ``head_activations`` is our LM head's
    arithmetic (default :data:`~llm_quant.gguf.HEAD_ACTIVATIONS`, as models load; ``"int8"``
    is llama.cpp's; see :func:`~llm_quant.gguf.load_gguf_model`). Raises :class:`GGUFError`
    for a file we cannot load and ``ImportError`` (naming the package) when
    llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        raise ImportError(
            "validate compares against llama.cpp: install llama-cpp-python "
            "(`pip install llama-cpp-python`, or `uv sync --group peers` in the workspace)"
        ) from None
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    model, _ = load_gguf_model(path, head_activations=head_activations)
    try:
        vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        ids = vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if not ids:
            raise ValueError("the prompt is empty after tokenization")
        if len(ids) + max_tokens > model.config.max_seq_len:
            raise ValueError(
                f"{len(ids)} prompt tokens + {max_tokens} exceed the context of "
                f"{model.config.max_seq_len}"
            )
        cpp = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=len(ids) + max_tokens + 1,  # small: logits_all keeps n_ctx rows of logits
            n_batch=1,
            n_threads=threads,
            logits_all=True,
            type_k=0,  # F32 KV cache, as ours
            type_v=0,
            verbose=False,
        )
    except RuntimeError as exc:
        raise GGUFError(f"{path}: llama.cpp cannot load it ({exc})") from None
    cpp.eval(ids)
    reference = torch.tensor(cpp.scores[len(ids) - 1], dtype=torch.float32)  # [V]
    cpp_tokens = []
    for token in cpp.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        cpp_tokens.append(int(token))
        if len(cpp_tokens) == max_tokens:
            break
    ours_logits, ours_tokens = _greedy(model, ids, max_tokens)
    diff = (ours_logits - reference[: ours_logits.shape[0]]).abs().max().item()
    agree = next(
        (i for i, (a, b) in enumerate(zip(ours_tokens, cpp_tokens, strict=False)) if a != b),
        min(len(ours_tokens), len(cpp_tokens)),
    )
    tie_margin = None
    if agree < min(len(ours_tokens), len(cpp_tokens)):
        # generate() kept every evaluated position's logits: row len(ids) - 1 + agree chose
        # llama.cpp's token at the first difference
        row = torch.tensor(cpp.scores[len(ids) - 1 + agree], dtype=torch.float32)
        lead = (row[cpp_tokens[agree]] - row[ours_tokens[agree]]).item()
        tie_margin = lead / max(row.abs().max().item(), 1e-30)
    return Validation(
        prompt_ids=list(ids),
        ours_next=int(ours_logits.argmax()),
        cpp_next=int(reference.argmax()),
        max_abs_diff=diff,
        max_rel_diff=diff / max(reference.abs().max().item(), 1e-30),
        ours_tokens=ours_tokens,
        cpp_tokens=cpp_tokens,
        agree=agree,
        ours_text=cpp.detokenize(ours_tokens).decode("utf-8", errors="replace"),
        cpp_text=cpp.detokenize(cpp_tokens).decode("utf-8", errors="replace"),
        tie_margin=tie_margin,
        head_activations=head_activations,
    )


@torch.no_grad()
def _greedy(model: Any, ids: list[int], n: int) -> tuple[torch.Tensor, list[int]]:
    """Next-token logits after ``ids`` ([V]) and ``n`` greedy tokens, with a static cache."""
    cache = model.new_cache(1, capacity=len(ids) + n)
    logits = model(torch.tensor([ids]), cache, logits_to_keep=1)[0, -1]  # [V]
    first = logits.clone()
    out: list[int] = []
    for _ in range(n):
        token = int(logits.argmax())
        out.append(token)
        logits = model(torch.tensor([[token]]), cache)[0, -1]  # [V]
    return first, out
