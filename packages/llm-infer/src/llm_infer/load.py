"""``load()``: a checkpoint directory, an HF model directory, a GGUF file or a bundled name."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from llm_core import CheckpointError, load_model
from llm_tokenizer import Tokenizer, TokenizerError

from llm_infer.errors import LoadError
from llm_infer.llm import LLM

DEMO_DIR = Path(__file__).parent / "demo_model"  # the bundled model, loaded by the name "demo"
DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def load(
    source: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    compile: bool = False,
) -> LLM:
    """Load a model and its tokenizer, ready to generate.

    ``source`` is an llm-core checkpoint directory, an HF Llama/Mistral/Qwen2 directory
    (``config.json``, ``*.safetensors``, ``tokenizer.json``; the chat template is read from
    ``tokenizer_config.json``), or ``"demo"``, the small model bundled with this package. ``dtype`` is a torch dtype or its
    name (``"bf16"``, ...). ``compile=True``: decode steps through ``torch.compile`` (see
    :class:`~llm_infer.llm.LLM`).

    Raises :class:`LoadError` naming the path and what is wrong with it: missing, not a
    model, no tokenizer, a tokenizer larger than the model's vocabulary, or a kind of source
    that is not available yet (GGUF files; ``demo`` when the bundled model is not built).
    """
    if str(source) == "demo":
        if not (DEMO_DIR / "config.json").is_file():
            raise LoadError(
                f"the bundled demo model is not built yet (no {DEMO_DIR}; `make demo-model` builds it)"
            )
        source = DEMO_DIR
    path = Path(source)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LoadError(f"{path}: no such GGUF file")
        raise LoadError(f"{path}: GGUF needs llm-quant's GGUF reader (not available yet)")
    if not path.exists():
        raise LoadError(f"{path}: no such model directory (nor the name of a bundled model)")
    if not (path / "tokenizer.json").is_file():
        raise LoadError(f"{path}: no tokenizer.json beside the weights")
    torch_dtype = _dtype(dtype)
    try:
        model = load_model(path, device=device, dtype=torch_dtype)
    except CheckpointError as exc:
        raise LoadError(str(exc)) from None
    try:
        tokenizer = Tokenizer.from_file(path)
    except (TokenizerError, OSError) as exc:
        raise LoadError(f"{path / 'tokenizer.json'}: {exc}") from None
    try:
        return LLM(model, tokenizer, source=str(path), compile=compile)
    except ValueError as exc:  # a tokenizer larger than the model's vocabulary
        raise LoadError(f"{path}: {exc}") from None


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise LoadError(f"unknown dtype {dtype!r} (use {', '.join(DTYPE_NAMES)})")
    return DTYPE_NAMES[dtype]


class _Notice(logging.Handler):
    """Writes a record's message to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr)


def show_kernel_notices() -> None:
    """Print llm-kernels' one-line notices on stderr, for command-line front ends: a model's
    first load on a machine waits about 20 s while the native kernels compile, and should say
    so. Calling it again adds nothing."""
    kernels = logging.getLogger("llm_kernels")
    if any(h.get_name() == "llm-kernels-notice" for h in kernels.handlers):
        return
    notice = _Notice()
    notice.set_name("llm-kernels-notice")
    kernels.setLevel(logging.INFO)
    kernels.addHandler(notice)
