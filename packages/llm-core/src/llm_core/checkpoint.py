"""Checkpoints: a directory of ``config.json``, ``model.safetensors`` (sharded above a size) and
an optional ``tokenizer.json``.

Writes are atomic: everything goes into a temporary sibling directory, is fsynced, and then
replaces the target in one rename, so a failure midway leaves the previous checkpoint intact.
Loading rebuilds the model from the stored config (never the caller's) and checks every
tensor's name and shape. A quantized model (one with a ``quantization`` attribute, set by
llm-quant) is saved with that entry in ``config.json``; loading one asks the entry point of
the ``llm_core.quantization`` group named by its ``method`` to rebuild the quantized layers
on the 'meta' device, so the float weights never exist. An HF ``LlamaForCausalLM``/``MistralForCausalLM``/``Qwen2ForCausalLM``
directory loads through the same :func:`load_model`.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llm_core.config import ModelConfig
from llm_core.errors import CheckpointError, ConfigError
from llm_core.model import DTYPES, Transformer

FORMAT = "llm-core"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


# -- saving ---------------------------------------------------------------------------------


def save_model(
    model: Transformer,
    path: str | Path,
    tokenizer_json: str | Mapping[str, Any] | Path | None = None,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write ``model`` (and a tokenizer) as a checkpoint directory at ``path``, atomically.

    ``tokenizer_json`` is the tokenizer's JSON text, a mapping, or a path to a ``tokenizer.json``.
    Weights above ``max_shard_bytes`` are split into ``model-0000i-of-0000n.safetensors`` with an
    index. An existing checkpoint at ``path`` is replaced only once the new one is complete.
    Returns the path. Raises ``CheckpointError`` when ``path`` exists and is not a directory.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_text = _tokenizer_text(tokenizer_json)
    tensors = checkpoint_state_dict(model)
    with _atomic_directory(path) as tmp:
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.config.to_dict()}
        quantization = getattr(model, "quantization", None)
        if quantization is not None:
            config["quantization"] = quantization
        _write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
        shards = _shard(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / WEIGHTS_NAME), metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata=meta)
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {**meta, "total_size": total}, "weight_map": weight_map}
            _write_text(tmp / INDEX_NAME, json.dumps(index, indent=2) + "\n")
        if tokenizer_text is not None:
            _write_text(tmp / "tokenizer.json", tokenizer_text)
    return path


def checkpoint_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: contiguous, detached, CPU; a tied LM head stored once."""
    return {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.state_dict().items()
        if not (name == "lm_head.weight" and model.config.tie_embeddings)
    }


def expected_shapes(model: Transformer) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor a checkpoint of ``model`` holds (works on 'meta' models)."""
    return {
        name: tuple(tensor.shape)
        for name, tensor in model.state_dict().items()
        if not (name == "lm_head.weight" and model.config.tie_embeddings)
    }


def _tokenizer_text(tokenizer_json: str | Mapping[str, Any] | Path | None) -> str | None:
    if tokenizer_json is None:
        return None
    if isinstance(tokenizer_json, Path):
        return tokenizer_json.read_text(encoding="utf-8")
    if isinstance(tokenizer_json, Mapping):
        return json.dumps(tokenizer_json, ensure_ascii=False)
    try:
        json.loads(tokenizer_json)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"tokenizer_json is not valid JSON: {exc}") from None
    return tokenizer_json


def _shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success, make it ``path`` atomically."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if path.exists():
            if not _exchange(tmp, path):  # no renameat2: two renames, a tiny window
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.rename(path, old / path.name)
                os.rename(tmp, path)
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous checkpoint
        else:
            os.rename(tmp, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False if unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


# -- loading --------------------------------------------------------------------------------


def load_model(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Transformer:
    """Load a checkpoint directory written by :func:`save_model`, or an HF model directory.

    The model is rebuilt from the stored config. Weights are read memory-mapped and assigned
    without an extra copy where no dtype or device change is asked for. Raises
    :class:`CheckpointError` with a message naming the file, tensor or field at fault.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a checkpoint is a directory, this is a file")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: no config.json (not a checkpoint directory)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    if "format" in raw:
        config, rename = _our_config(raw, config_path), None
    elif "architectures" in raw or "model_type" in raw:
        from llm_core.hf import hf_config_to_model_config, hf_tensor_name

        config, rename = hf_config_to_model_config(raw, source=str(config_path)), hf_tensor_name
    else:
        raise CheckpointError(
            f"{config_path}: neither an llm-core checkpoint (no 'format') nor an HF config (no 'architectures')"
        )
    files = _weight_files(path)
    target_dtype = dtype or DTYPES[config.dtype]
    with torch.device("meta"):
        model = Transformer(config)
    if "quantization" in raw:
        _prepare_quantized(model, raw["quantization"], config_path)
    expected = expected_shapes(model)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in _read_safetensors(file, check_format=rename is None):
            key = rename(name) if rename else name
            if key is None:
                continue  # a tensor with no counterpart that HF also ignores (rotary tables)
            if key not in expected:
                if key == "lm_head.weight" and config.tie_embeddings:
                    continue  # a tied head saved explicitly: the embedding is the same tensor
                raise CheckpointError(f"{file}: unexpected tensor {name!r}")
            want = expected[key]
            if tuple(tensor.shape) != want:
                raise CheckpointError(
                    f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {want}"
                )
            cast = target_dtype if key in parameters else tensor.dtype
            state[key] = tensor.to(device=device or "cpu", dtype=cast)
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}{more}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    _materialize_buffers(model, config, device)
    if dtype is not None:
        model.config = config.model_copy(update={"dtype": _dtype_name(dtype)})
    return model.eval()


def _prepare_quantized(model: Transformer, quantization: Any, config_path: Path) -> None:
    """Rebuild the quantized layers that ``quantization`` (from ``config.json``) describes,
    through the ``llm_core.quantization`` entry point its ``method`` names."""
    method = quantization.get("method") if isinstance(quantization, dict) else None
    found = [ep for ep in entry_points(group="llm_core.quantization") if ep.name == method]
    if not found:
        raise CheckpointError(
            f"{config_path}: quantized with method {method!r}, which no installed package "
            "provides (install llm-quant)"
        )
    try:
        found[0].load()(model, quantization)
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: quantization: {exc}") from None
    model.quantization = quantization


def _our_config(raw: dict[str, Any], config_path: Path) -> ModelConfig:
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: format {raw.get('format')!r} is not {FORMAT!r}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {version!r} is not supported (this llm-core reads {FORMAT_VERSION})"
        )
    fields = {k: v for k, v in raw.items() if k not in ("format", "format_version", "quantization")}
    try:
        return ModelConfig.from_dict(fields, source=str(config_path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index}: lists {f.name}, which is missing")
        return files
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no model weights (no {WEIGHTS_NAME} or *.safetensors)")
    return files


def _read_safetensors(file: Path, *, check_format: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from a memory-mapped safetensors file, validating it first."""
    try:
        handle = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{file}: not a valid safetensors file (truncated or corrupt: {exc})"
        ) from None
    with handle as f:
        if check_format:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(
                    f"{file}: metadata format {meta.get('format')!r} is not {FORMAT!r}"
                )
            if meta.get("format_version") != str(FORMAT_VERSION):
                raise CheckpointError(
                    f"{file}: format_version {meta.get('format_version')!r} is not supported "
                    f"(this llm-core reads {FORMAT_VERSION})"
                )
        for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
            try:
                yield name, f.get_tensor(name)
            except (SafetensorError, RuntimeError) as exc:
                raise CheckpointError(f"{file}: cannot read tensor {name!r}: {exc}") from None


def _materialize_buffers(model: Transformer, config: ModelConfig, device: Any) -> None:
    """Recompute the non-persistent buffers (RoPE frequencies), which stay on 'meta' after assign."""
    rotary = model.model.rotary_emb
    if rotary is not None:
        fresh = type(rotary)(config)
        rotary.inv_freq = fresh.inv_freq.to(device or "cpu")


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise CheckpointError(f"unsupported dtype {dtype} (use float32, bfloat16 or float16)")
