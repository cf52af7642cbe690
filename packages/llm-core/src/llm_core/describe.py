"""Describe a checkpoint from its config and safetensors headers, without loading weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from llm_core.checkpoint import _weight_files
from llm_core.errors import CheckpointError
from llm_core.hf import hf_config_to_model_config


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """``{kind, config, parameters, dtypes, bytes, tokenizer}`` of a checkpoint directory.

    ``parameters`` counts the stored tensors' elements; ``bytes`` is the size of the weight
    files. Raises :class:`CheckpointError` for a missing or unreadable checkpoint.
    """
    path = Path(path)
    config_path = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not config_path.is_file():
        raise CheckpointError(f"{path}: no config.json (not a checkpoint directory)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON: {exc}") from None
    if "format" in raw:
        kind = f"{raw['format']} v{raw.get('format_version')}"
        config = {k: v for k, v in raw.items() if k not in ("format", "format_version")}
    else:
        kind = f"HF {', '.join(raw.get('architectures') or [raw.get('model_type', '?')])}"
        config = hf_config_to_model_config(raw, source=str(config_path)).to_dict()
    parameters, dtypes, nbytes = 0, set(), 0
    for file in _weight_files(path):
        nbytes += file.stat().st_size
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118
                    sl = f.get_slice(name)
                    count = 1
                    for d in sl.get_shape():
                        count *= d
                    parameters += count
                    dtypes.add(sl.get_dtype())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: not a valid safetensors file ({exc})") from None
    return {
        "kind": kind,
        "config": config,
        "parameters": parameters,
        "dtypes": sorted(dtypes),
        "bytes": nbytes,
        "tokenizer": (path / "tokenizer.json").is_file(),
    }
