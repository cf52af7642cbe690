"""GGUF files (llama.cpp's format, v2 and v3): metadata, config, tensors and the whole model.

:func:`read_header` reads the header with every count and offset checked against the file size,
so a malformed file is refused with one clear :class:`GGUFError` before anything reads past its
end or allocates for an absurd count; tensor data stays in a read-only memory map. (gguf-py's
``GGUFReader`` reads the same files, and the tests compare with it, but it builds numpy views
for every array item: 45 s for SmolLM2's 98k vocabulary strings against ~1 s here; and it loops
without end on an array whose count runs past the end of the file.) gguf-py supplies the type
tables and the dequantizers of the rarer types.

Tensors load one at a time through :func:`tensor_to_float` (the one per-tensor step: a tensor's
info in, a float32 torch tensor out), are renamed to llm-core's names, and for ``llama`` models
the q/k row permutation that llama.cpp's converter applies is undone (``qwen2`` keeps HF's order).
By default the linear layers' Q8_0 / Q4_0 / Q4_1 weights are not dequantized: they stay the
file's blocks (memory-mapped) inside :class:`~llm_quant.linear.GGUFLinear` layers, which the
native kernels multiply by directly; a tied LM head gets such a layer over the embedding's
blocks, and the embedding table stays blocks too (:class:`~llm_quant.linear.GGUFEmbedding`).
Other types (K-quants, F16, ...) are dequantized to float.
"""

from __future__ import annotations

import math
import mmap
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from llm_core import ConfigError, ModelConfig, Transformer
from llm_kernels import native

from llm_quant.dequant import dequantize, supported_types
from llm_quant.linear import GGUFEmbedding, GGUFLinear

KEPT_TYPES = {  # GGUF types whose blocks linear layers multiply by as they are
    GGMLQuantizationType.Q8_0: "q8_0",
    GGMLQuantizationType.Q4_0: "q4_0",
    GGMLQuantizationType.Q4_1: "q4_1",
}
_KEPT_SUFFIXES = ("_proj.weight", "lm_head.weight", "embed_tokens.weight")
# The LM head multiplies int16 activations by default: its argmax picks the token, and int8
# activations (a per-block rounding error of about 0.3% of a logit's scale) flip near-ties.
# SmolLM2's first answer token to "What is the capital of France?" ("The") leads "L" by 0.082
# of 25.3 with float activations (the answer transformers gives: Paris); int8 activations
# move the two logits by 0.01 and 0.12 and make "L" lead by 0.051: a French ramble, which
# is what llama.cpp answers on the same file. Int16 activations (int16 per block of 32, steps 258
# times finer) move them by about 1e-5 (lead 0.0822, Paris; the same 64 greedy tokens as
# float on the SmolLM2 test prompts) at near int8's speed: a 4-bit head (32000 x 768 or
# 49152 x 576, Q4_0 / Q4_1) in 1.15-1.3x int8's time and 0.45x float's; SmolLM2's own head,
# 49152 x 576 Q8_0, is bound by reading its 30 MB: int8 and int16 alike, float 10% faster on
# one core and 10% slower on two (docs/benchmarks.md, "LM head arithmetic").
# ``head_activations="float"`` is the exact product, ``"int8"`` llama.cpp's rounding of the
# activations (its sums run in another order, so its tokens can still differ at near-ties).
HEAD_ACTIVATIONS = "int16"
HEAD_CHOICES = ("float", "int16", "int8")

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays deeper than this are refused
# Scalar value types: GGUF type id -> struct format (little-endian).
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = int(GGUFValueType.STRING), int(GGUFValueType.ARRAY)
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


class GGUFError(ValueError):
    """A GGUF file that cannot be read or run; the message names the file and the problem."""


# -- header check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: its name, GGML type, torch-order shape and raw bytes.

    ``data`` is a read-only view of the memory-mapped file (no copy); ``offset`` is its byte
    offset in the file.
    """

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order: rows first (GGUF stores ne0, the row length, first)
    n_bytes: int
    offset: int
    data: np.ndarray


class _Cursor:
    """Reads little-endian GGUF header fields, refusing any read past the end of the file."""

    def __init__(self, buf: mmap.mmap | bytes, size: int, source: str) -> None:
        self.buf, self.size, self.pos, self.source = buf, size, 0, source

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.source}: {what}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(
                f"truncated header: {what} at byte {self.pos} needs {n} bytes, "
                f"the file has {self.size - self.pos} left"
            )

    def take(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        length = self.take("<Q", f"the length of {what}")
        self.need(length, what)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos - length} is not UTF-8") from None

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        """The value of type ``vtype`` at the cursor, as plain Python (lists for arrays)."""
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype], f"the value of {key!r}")
        if vtype == _STRING:
            return self.string(f"the value of {key!r}")
        if vtype != _ARRAY:
            raise self.fail(f"{key!r}: unknown value type {vtype}")
        if depth >= MAX_NESTING:
            raise self.fail(f"{key!r}: arrays nested more than {MAX_NESTING} deep")
        itype = self.take("<I", f"the element type of {key!r}")
        count = self.take("<Q", f"the length of {key!r}")
        if itype in _SCALARS:
            dtype = np.dtype(_SCALARS[itype])
            self.need(count * dtype.itemsize, f"the {count} elements of {key!r}")
            items = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).tolist()
            self.pos += count * dtype.itemsize
            return items
        if itype not in (_STRING, _ARRAY):
            raise self.fail(f"{key!r}: unknown array element type {itype}")
        self.need(count * (8 if itype == _STRING else 12), f"the {count} elements of {key!r}")
        return [self.value(itype, key, depth + 1) for _ in range(count)]


@dataclass(frozen=True)
class Header:
    """A GGUF header, checked: version, metadata (plain Python values), tensor infos
    ``(name, dims in GGUF order, type, offset from data_start)`` and where the data starts."""

    version: int
    metadata: dict[str, Any]
    tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]]
    data_start: int


def read_header(path: str | Path) -> Header:
    """Read and check a GGUF header against the file's size, trusting no count in it.

    Checks the magic, the version (2 or 3), that every key, string, array and tensor info fits
    in the file, the tensor types and dimensions, the alignment, and that every tensor's data
    lies inside the file. Nothing past the end is read and nothing is allocated for a count
    the file cannot hold. Raises :class:`GGUFError` naming the file and the first problem.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise GGUFError(f"{path}: not a GGUF file ({size} bytes, shorter than a GGUF header)")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _read_header(_Cursor(buf, size, str(path)))


def check_header(path: str | Path) -> None:
    """Check a GGUF header (see :func:`read_header`); raises :class:`GGUFError`."""
    read_header(path)


def _read_header(r: _Cursor) -> Header:
    magic = r.buf[:4]
    if magic != b"GGUF":
        raise r.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
    r.pos = 4
    version = r.take("<I", "the version")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise r.fail(f"GGUF version {version} is not supported (2 or 3){hint}")
    n_tensors = r.take("<Q", "the tensor count")
    n_kv = r.take("<Q", "the metadata key count")
    if n_kv * _MIN_KV_BYTES > r.size - r.pos:
        raise r.fail(f"the header claims {n_kv} metadata keys, more than the file can hold")
    if n_tensors * _MIN_TENSOR_INFO_BYTES > r.size - r.pos:
        raise r.fail(f"the header claims {n_tensors} tensors, more than the file can hold")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key {i}")
        if key in metadata:
            raise r.fail(f"metadata key {key!r} appears twice")
        vtype = r.take("<I", f"the type of {key!r}")
        if key == "general.alignment" and vtype != int(GGUFValueType.UINT32):
            raise r.fail("general.alignment must be a uint32")
        metadata[key] = r.value(vtype, key)
    alignment = metadata.get("general.alignment", 32)
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment} is not a power of two")
    tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
    sizes: list[int] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = r.string(f"the name of tensor {i}")
        if name in names:
            raise r.fail(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = r.take("<I", f"the dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS})")
        dims = tuple(int(r.take("<Q", f"a dimension of {name!r}")) for _ in range(n_dims))
        raw_type = r.take("<I", f"the type of {name!r}")
        try:
            qtype = GGMLQuantizationType(raw_type)
            block_size, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise r.fail(f"tensor {name!r} has an unknown type {raw_type}") from None
        offset = r.take("<Q", f"the data offset of {name!r}")
        if dims[0] % block_size:
            raise r.fail(
                f"tensor {name!r}: rows of {dims[0]} are not whole {qtype.name} blocks of {block_size}"
            )
        if offset % alignment:
            raise r.fail(f"tensor {name!r}: data offset {offset} is not aligned to {alignment}")
        n_elements = math.prod(dims)
        tensors.append((name, dims, qtype, offset))
        sizes.append(n_elements // block_size * type_size)
    data_start = -(-r.pos // alignment) * alignment
    for (name, _dims, _qtype, offset), n_bytes in zip(tensors, sizes, strict=True):
        end = data_start + offset + n_bytes
        if end > r.size:
            raise r.fail(
                f"tensor {name!r} ends at byte {end}, past the end of the file ({r.size} bytes)"
            )
    return Header(version, metadata, tensors, data_start)


# -- the file ------------------------------------------------------------------------------------


class GGUFFile:
    """A GGUF file: ``metadata`` (plain Python values) and ``tensors`` (views of the file,
    memory-mapped read-only, never read whole).

    Raises :class:`GGUFError` when the file is missing or malformed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"{self.path}: no such GGUF file")
        header = read_header(self.path)
        self.version = header.version
        self.metadata = header.metadata
        data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, qtype, offset in header.tensors:
            block_size, type_size = GGML_QUANT_SIZES[qtype]
            n_bytes = math.prod(dims) // block_size * type_size
            start = header.data_start + offset
            self.tensors[name] = TensorInfo(
                name=name,
                type=qtype,
                shape=tuple(reversed(dims)),
                n_bytes=n_bytes,
                offset=start,
                data=data[start : start + n_bytes],
            )

    def release(self, info: TensorInfo) -> None:
        """Tell the OS this process no longer needs the whole pages of ``info``'s bytes
        (``MADV_DONTNEED`` on the read-only mapping: they leave the resident set, and a later
        read faults them in again from the file). A no-op where madvise is unavailable."""
        mapping = getattr(info.data.base, "_mmap", None) or getattr(info.data, "_mmap", None)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if mapping is None or advice is None:
            return
        start = -(-info.offset // mmap.PAGESIZE) * mmap.PAGESIZE  # inward to whole pages
        end = (info.offset + info.n_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            mapping.madvise(advice, start, end - start)

    @property
    def architecture(self) -> str:
        """``general.architecture`` (e.g. ``llama``); raises :class:`GGUFError` when absent."""
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: no general.architecture in the metadata")
        return arch

    def config(self) -> ModelConfig:
        """The llm-core config this file's metadata and tensors describe (see :func:`gguf_config`)."""
        return gguf_config(self.metadata, self.tensors, source=str(self.path))

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.tensors)} tensors)"


# -- config --------------------------------------------------------------------------------------


def gguf_config(
    metadata: dict[str, Any], tensors: dict[str, TensorInfo], *, source: str = "GGUF"
) -> ModelConfig:
    """Translate GGUF metadata to a :class:`~llm_core.ModelConfig`.

    Reads ``{arch}.context_length``, ``embedding_length``, ``block_count``,
    ``feed_forward_length``, ``attention.head_count`` / ``head_count_kv`` / ``key_length`` /
    ``layer_norm_rms_epsilon`` / ``sliding_window``, ``rope.freq_base`` and
    ``rope.scaling.*`` (``linear`` and ``yarn``); biases and tied embeddings follow from the
    tensors present. Raises :class:`GGUFError` for another architecture (naming the supported
    ones), a missing key, or anything this model cannot reproduce exactly.
    """
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{source}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def get(key: str, default: Any = None, *, required: bool = False) -> Any:
        full = f"{arch}.{key}"
        if full not in metadata:
            if required:
                raise GGUFError(f"{source}: missing metadata key {full!r}")
            return default
        return metadata[full]

    def integer(key: str, default: int | None = None, *, required: bool = False) -> int | None:
        value = get(key, default, required=required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise GGUFError(f"{source}: {arch}.{key} must be an integer, got {value!r}")
        return int(value)

    n_embd = integer("embedding_length", required=True)
    n_head = integer("attention.head_count", required=True)
    assert n_embd is not None and n_head is not None
    n_kv = integer("attention.head_count_kv", n_head)
    key_length = integer("attention.key_length")
    head_dim = key_length or (n_embd // n_head if n_head > 0 else 0)
    value_dim = integer("attention.value_length", head_dim)
    if value_dim != head_dim:
        raise GGUFError(f"{source}: key_length {head_dim} != value_length {value_dim}")
    rope_dim = integer("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise GGUFError(
            f"{source}: partial rotary embeddings (rope.dimension_count {rope_dim} of a "
            f"head of {head_dim}) are not supported"
        )
    if "rope_freqs.weight" in tensors:
        raise GGUFError(
            f"{source}: per-frequency RoPE factors (tensor 'rope_freqs.weight', Llama 3.1-style "
            "scaling) are not supported"
        )
    embd = tensors.get("token_embd.weight")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = integer("vocab_size")
    if vocab is None:
        if embd is not None:
            vocab = embd.shape[0]
        elif isinstance(tokens, list):
            vocab = len(tokens)
        else:
            raise GGUFError(f"{source}: cannot tell the vocabulary size (no token_embd.weight)")
    fields: dict[str, Any] = {
        "vocab_size": vocab,
        "n_embd": n_embd,
        "n_layer": integer("block_count", required=True),
        "n_head": n_head,
        "n_kv_head": n_kv,
        "intermediate_size": integer("feed_forward_length", required=True),
        "max_seq_len": integer("context_length", 2048),
        "rope_base": float(get("rope.freq_base", 10000.0)),
        "norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "position_encoding": "rope",
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "tie_embeddings": "output.weight" not in tensors,
        "qkv_bias": "blk.0.attn_q.bias" in tensors,
        "o_bias": "blk.0.attn_output.bias" in tensors,
    }
    if key_length is not None and key_length * n_head != n_embd:
        fields["head_size"] = key_length
    blocks = {name.split(".")[1] for name in tensors if name.startswith("blk.")}
    if tensors and len(blocks) != fields["n_layer"]:
        raise GGUFError(
            f"{source}: {arch}.block_count is {fields['n_layer']}, but the file has tensors "
            f"for {len(blocks)} blocks"
        )
    window = integer("attention.sliding_window")
    if window:
        fields["window_size"] = window
    fields.update(_rope_scaling(get, fields["max_seq_len"], source))
    try:
        return ModelConfig.from_dict(fields, source=source)
    except ConfigError as exc:
        raise GGUFError(str(exc)) from None


def _rope_scaling(get: Any, max_seq_len: int, source: str) -> dict[str, Any]:
    """``rope_scaling`` and ``original_max_seq_len`` from ``{arch}.rope.scaling.*``."""
    kind = get("rope.scaling.type", "none")
    factor = get("rope.scaling.factor")
    if factor is None and get("rope.scale_linear") is not None:  # the pre-2024 key
        kind, factor = "linear", get("rope.scale_linear")
    if kind == "none" or factor in (None, 0.0, 1.0):
        return {}
    original = get("rope.scaling.original_context_length")
    if kind == "linear":
        return {
            "rope_scaling": {"type": "linear", "factor": float(factor)},
            "original_max_seq_len": max_seq_len,
        }
    if kind == "yarn":
        scaling: dict[str, Any] = {"type": "yarn", "factor": float(factor)}
        for key, name in (
            ("rope.scaling.yarn_beta_fast", "beta_fast"),
            ("rope.scaling.yarn_beta_slow", "beta_slow"),
            ("rope.scaling.attn_factor", "attention_factor"),
        ):
            if get(key) is not None:
                scaling[name] = float(get(key))
        return {
            "rope_scaling": scaling,
            "original_max_seq_len": int(original or max_seq_len / float(factor)),
        }
    raise GGUFError(
        f"{source}: rope scaling type {kind!r} is not supported (supported: none, linear, yarn)"
    )


# -- tensors -------------------------------------------------------------------------------------

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def llm_core_name(gguf_name: str) -> str | None:
    """llm-core's parameter name for a GGUF tensor name (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``), or None for a name it has no counterpart for."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
    return None


def tensor_to_float(info: TensorInfo) -> torch.Tensor:
    """The per-tensor load step: one GGUF tensor dequantized to float32, in torch order.

    Raises :class:`GGUFError` for a type without a dequantizer.
    """
    try:
        return dequantize(info.data, info.type, info.shape)
    except NotImplementedError:
        supported = ", ".join(t.name for t in supported_types())
        raise GGUFError(
            f"tensor {info.name!r} has type {info.type.name}, which cannot be dequantized "
            f"(supported: {supported})"
        ) from None


def tensor_blocks(info: TensorInfo) -> torch.Tensor:
    """A 2-D quantized tensor's blocks as ``uint8 [rows, row bytes]``: a view of the mapped file
    (no copy; read-only, which torch cannot mark, so never write to it)."""
    raw = np.asarray(info.data).reshape(info.shape[0], -1)  # (rows, row bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns on read-only arrays
        return torch.from_numpy(raw.view(np.uint8))


def unpermute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation for ``llama`` models (its converter interleaves the
    two halves of each head's rotary pairs): rows ``[H * D]`` regrouped per head from
    ``(D/2, 2)`` to ``(2, D/2)``. Works on weights ``[H * D, in]`` and biases ``[H * D]``."""
    rows = weight.shape[0]
    per_head = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])  # [H, D/2, 2, ...]
    return per_head.transpose(1, 2).reshape(weight.shape)  # [H * D, ...]


def iter_model_tensors(
    gguf: GGUFFile, config: ModelConfig, *, keep_quantized: bool = False
) -> Iterator[tuple[str, TensorInfo, torch.Tensor]]:
    """Yield ``(llm_core_name, info, tensor)`` one tensor at a time, renamed, shape-checked
    against ``config`` and with llama's q/k permutation undone: float32, or with
    ``keep_quantized`` a linear layer's weight of a :data:`KEPT_TYPES` type as its blocks
    (:func:`tensor_blocks`; uint8), and so the embedding table. Raises :class:`GGUFError` for an unknown tensor name or a
    shape that disagrees with the config."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    permute = gguf.architecture == "llama"
    for info in gguf.tensors.values():
        name = llm_core_name(info.name)
        if name is None or name not in expected:
            raise GGUFError(f"{gguf.path}: unexpected tensor {info.name!r}")
        if info.shape != expected[name]:
            raise GGUFError(
                f"{gguf.path}: tensor {info.name!r} has shape {info.shape}, but the config "
                f"needs {expected[name]}"
            )
        if keep_quantized and info.type in KEPT_TYPES and name.endswith(_KEPT_SUFFIXES):
            tensor = tensor_blocks(info)  # rows permute like float rows: blocks never span two
        else:
            tensor = tensor_to_float(info)
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = unpermute_qk(tensor, config.n_head)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = unpermute_qk(tensor, config.kv_heads)
        yield name, info, tensor


def load_gguf_model(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    quantized: bool = True,
    head_activations: str = HEAD_ACTIVATIONS,
) -> tuple[Transformer, GGUFFile]:
    """Load a GGUF file's model as an llm-core :class:`~llm_core.Transformer`.

    With ``quantized`` (the default, on CPU), linear layers stored as Q8_0 / Q4_0 / Q4_1 stay
    the file's blocks in :class:`~llm_quant.linear.GGUFLinear` layers (memory-mapped: resident
    memory about the file's size), and a tied LM head multiplies by the embedding's blocks the
    same way. Everything else is dequantized one tensor at a time and moved into the model, so
    the file (mapped, not read into memory) and the float tensors are the only large
    allocations. ``head_activations`` is how a quantized LM head takes its input (default
    :data:`HEAD_ACTIVATIONS`): ``"float"`` (the exact product), ``"int16"`` (blocks of 32
    quantized to int16: within about 1e-5 of it, near int8's speed) or ``"int8"`` (blocks of
    32 quantized to int8, as llama.cpp does, the fastest head). ``dtype`` (default float32)
    applies to the float tensors. Returns the model (in eval mode) and the open file, whose
    ``metadata`` holds the tokenizer. Raises :class:`GGUFError` naming the file and the
    problem.
    """
    if head_activations not in HEAD_CHOICES:
        raise ValueError(
            f"head_activations must be 'float', 'int16' or 'int8', got {head_activations!r}"
        )
    gguf = GGUFFile(path)
    config = gguf.config()
    target = dtype or torch.float32
    keep = quantized and torch.device(device or "cpu").type == "cpu"
    with torch.device("meta"):
        model = Transformer(config)
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    tied_head: GGUFLinear | None = None
    sources: dict[GGUFLinear, TensorInfo] = {}  # each layer's tensor in the file
    for name, info, tensor in iter_model_tensors(gguf, config, keep_quantized=keep):
        if tensor.dtype == torch.uint8 and name == "model.embed_tokens.weight":
            fmt = KEPT_TYPES[info.type]
            model.model.embed_tokens = GGUFEmbedding(
                config.vocab_size, config.n_embd, fmt, dtype=target, device="meta"
            )
            state["model.embed_tokens.blocks"] = tensor
            if config.tie_embeddings:
                tied_head = GGUFLinear.from_blocks(
                    tensor, fmt, config.n_embd, activations=head_activations
                )
            continue
        if tensor.dtype == torch.uint8:
            layer_name = name.removesuffix(".weight")
            old = modules[layer_name]
            new = GGUFLinear(
                old.in_features,
                old.out_features,
                KEPT_TYPES[info.type],
                old.bias is not None,
                device="meta",
                dtype=target,
                **({"activations": head_activations} if layer_name == "lm_head" else {}),
            )
            parent, _, child = layer_name.rpartition(".")
            setattr(modules[parent] if parent else model, child, new)
            state[f"{layer_name}.blocks"] = tensor
            sources[new] = info
            continue
        state[name] = tensor.to(device=device or "cpu", dtype=target)
    missing = [k for k in model.state_dict() if k not in state]
    if config.tie_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GGUFError(f"{gguf.path}: missing tensor for {missing[0]!r}{more}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied_head is not None:
        model.lm_head = tied_head
    elif config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if keep and native.available():
        # 4-bit layers in the layout the native kernel multiplies fastest (a tied head shares
        # the embedding's blocks and keeps them); the file's pages they were read from are
        # let go (they stay mapped: read again, they come back from the file)
        for layer, info in sources.items():
            if layer.interleave():
                gguf.release(info)
    rotary = model.model.rotary_emb
    if rotary is not None:  # a non-persistent buffer, still on 'meta' after assign
        rotary.inv_freq = type(rotary)(config).inv_freq.to(device or "cpu")
    if dtype is not None and dtype != torch.float32:
        name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype)
        if name is None:
            raise GGUFError(f"unsupported dtype {dtype} (use float32, bfloat16 or float16)")
        model.config = config.model_copy(update={"dtype": name})
    return model.eval(), gguf
