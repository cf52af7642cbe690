"""Drop-in quantized replacements for ``nn.Linear``: the weight stays quantized in memory and
every product runs through :func:`llm_kernels.quant.quant_linear` (the native kernel in CPU
decode, a dequantize-and-multiply elsewhere).

- :class:`Int8Linear`: the project's int8 (per output channel).
- :class:`Q4Linear`: the project's q4 (groups of 32, 64 or 128, optional zero points).
- :class:`GGUFLinear`: GGUF Q8_0 / Q4_0 / Q4_1 blocks exactly as they are in the file.
- :class:`GGUFEmbedding`: an embedding table kept as such blocks; a lookup dequantizes the
  rows it reads.

Quantized tensors are persistent buffers (``qweight``, ``scales``, ``mins``, ``blocks``), so
``state_dict`` and safetensors carry them in their own dtypes; a bias stays a float parameter.
"""

from __future__ import annotations

from typing import Literal

import torch
from llm_kernels import quant, reference
from llm_kernels.reference import BLOCK_BYTES, QK
from torch import nn

from llm_quant.schemes import ActivationMode

# A layer's activations: a scheme's, or "int16" (int16 per block of 32: about 1e-5 of a
# product, see llm_kernels.quant), which a GGUF model's LM head takes by default.
LayerActivations = Literal[ActivationMode, "int16"]
_KERNEL_MODE = {"float": "float", "int8": "int8", "dynamic": "int8-token", "int16": "int16"}


class QuantLinear(nn.Module):
    """The shared part: features, an optional float bias, the activation mode."""

    format: str

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        activations: LayerActivations,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if activations not in _KERNEL_MODE:
            raise ValueError(
                f"activations must be 'float', 'int8', 'dynamic' or 'int16', got {activations!r}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.activations = activations
        self.bias = (
            nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False)
            if bias
            else None
        )

    def _product(self, x: torch.Tensor, **weights: object) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return quant.quant_linear(
            x, format=self.format, bias=bias, activations=_KERNEL_MODE[self.activations], **weights
        )

    def weight_bytes(self) -> int:
        """Bytes of the quantized weight and its scales (the bias not included)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, format={self.format}, activations={self.activations}"
        )


class Int8Linear(QuantLinear):
    """``y = x @ W.T + b`` with ``W = qweight * scales[:, None]``: ``qweight`` int8 ``[N, K]``,
    ``scales`` float32 ``[N]``."""

    format = "int8"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        activations: LayerActivations = "float",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            bias=bias,
            activations=activations,
            device=device,
            dtype=dtype,
        )
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scales", torch.zeros(out_features, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, qweight=self.qweight, scales=self.scales)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[N, K]`` this layer multiplies by."""
        return quant.dequantize(self.qweight, "int8", scales=self.scales)


class Q4Linear(QuantLinear):
    """``y = x @ W.T + b`` with ``W`` in the project's q4 layout: ``qweight`` uint8
    ``[N, K/2]``, ``scales`` float16 ``[N, K/G]`` and, with zero points, ``mins``."""

    format = "q4"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        group_size: int = 64,
        zero_points: bool = False,
        activations: LayerActivations = "int8",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            bias=bias,
            activations=activations,
            device=device,
            dtype=dtype,
        )
        if in_features % group_size:
            raise ValueError(
                f"q4: in_features {in_features} is not a multiple of group_size {group_size}"
            )
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer(
            "scales", torch.zeros(out_features, groups, dtype=torch.float16, device=device)
        )
        self.mins: torch.Tensor | None
        if zero_points:
            self.register_buffer(
                "mins", torch.zeros(out_features, groups, dtype=torch.float16, device=device)
            )
        else:
            self.mins = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(
            x, qweight=self.qweight, scales=self.scales, mins=self.mins, group_size=self.group_size
        )

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[N, K]`` this layer multiplies by."""
        return quant.dequantize(
            self.qweight, "q4", scales=self.scales, mins=self.mins, group_size=self.group_size
        )


class GGUFLinear(QuantLinear):
    """``y = x @ W.T + b`` with ``W`` as GGUF ``Q8_0``/``Q4_0``/``Q4_1`` blocks, ``blocks``
    uint8 ``[N, K/32*B]`` (each row the file's bytes for that output)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        format: str,
        bias: bool = False,
        *,
        activations: LayerActivations = "int8",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            bias=bias,
            activations=activations,
            device=device,
            dtype=dtype,
        )
        if format not in BLOCK_BYTES:
            raise ValueError(f"GGUF format must be one of {sorted(BLOCK_BYTES)}, got {format!r}")
        if in_features % QK:
            raise ValueError(f"{format}: in_features {in_features} is not a multiple of {QK}")
        self.format = format
        row = in_features // QK * BLOCK_BYTES[format]
        self.register_buffer(
            "blocks", torch.zeros(out_features, row, dtype=torch.uint8, device=device)
        )

    @classmethod
    def from_blocks(
        cls,
        blocks: torch.Tensor,
        format: str,
        in_features: int,
        bias: torch.Tensor | None = None,
        activations: LayerActivations = "int8",
    ) -> GGUFLinear:
        """A layer around ``blocks`` (kept, not copied: a memory-mapped file stays mapped).
        Raises ``ValueError`` when the shape does not fit ``format`` and ``in_features``."""
        with torch.device("meta"):
            layer = cls(
                in_features, blocks.shape[0], format, bias is not None, activations=activations
            )
        if tuple(blocks.shape) != tuple(layer.blocks.shape) or blocks.dtype != torch.uint8:
            raise ValueError(
                f"{format}: blocks for {in_features} inputs must be uint8 "
                f"{tuple(layer.blocks.shape)}, got {blocks.dtype} {tuple(blocks.shape)}"
            )
        layer.blocks = blocks
        layer.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, qweight=self.blocks)

    @property
    def interleaved(self) -> bool:
        """Whether ``blocks`` hold eight rows interleaved (see :meth:`interleave`)."""
        return self.format in reference.INTERLEAVED

    def interleave(self) -> bool:
        """Keep Q4_0 / Q4_1 blocks with eight rows interleaved (llm-kernels' ``q4_0x8`` /
        ``q4_1x8``): the same values in a layout the CPU kernel multiplies about twice as fast
        (no horizontal sums; docs/benchmarks.md), a copy in place of the file's blocks. Only
        for int8 activations (prompts past 16 rows still take float ones, the exact product,
        as in the file's order), CPU blocks and a multiple of 8 outputs; ``format`` names the
        layout and ``state_dict`` still holds the file's order. Returns whether the layer
        changed."""
        if (
            self.format not in ("q4_0", "q4_1")
            or self.activations != "int8"
            or self.out_features % 8
            or self.blocks.device.type != "cpu"
        ):
            return False
        self.blocks = reference.interleave8(self.blocks, self.in_features, self.format)
        self.format = self.format + "x8"
        return True

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.interleaved:  # the file's order: a state dict means the same in any layer
            destination[prefix + "blocks"] = reference.deinterleave8(
                self.blocks, self.in_features, self.format
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = prefix + "blocks"
        if self.interleaved and key in state_dict:
            kind = reference.INTERLEAVED[self.format]
            state_dict = dict(state_dict)
            state_dict[key] = reference.interleave8(state_dict[key], self.in_features, kind)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def native_weight(self) -> tuple[torch.Tensor, int] | None:
        """``(blocks, format code)`` for llm-kernels' fused decode step
        (``torch.ops.llm_kernels.decode_layers``), which multiplies GGUF blocks with int8
        activations as this layer does; ``None`` where it would not compute what
        :meth:`forward` does (float activations, a bias)."""
        if self.activations != "int8" or self.bias is not None:
            return None
        return self.blocks, quant.FORMATS[self.format]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[N, K]`` this layer multiplies by."""
        return quant.dequantize(self.blocks, self.format)


class GGUFEmbedding(nn.Module):
    """``nn.Embedding`` over GGUF ``Q8_0``/``Q4_0``/``Q4_1`` rows: ``blocks`` uint8
    ``[V, D/32*B]``; a lookup dequantizes only the rows it reads (float32, or ``dtype``)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        format: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if format not in BLOCK_BYTES:
            raise ValueError(f"GGUF format must be one of {sorted(BLOCK_BYTES)}, got {format!r}")
        if embedding_dim % QK:
            raise ValueError(f"{format}: embedding_dim {embedding_dim} is not a multiple of {QK}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.format, self.dtype = format, dtype
        row = embedding_dim // QK * BLOCK_BYTES[format]
        self.register_buffer(
            "blocks", torch.zeros(num_embeddings, row, dtype=torch.uint8, device=device)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.blocks[ids.reshape(-1)]  # (n, row bytes)
        values = quant.dequantize(rows, self.format)  # (n, D)
        return values.to(self.dtype).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, format={self.format}"
