"""The project's quantization schemes for float checkpoints, and the weight quantizers.

- ``int8``: symmetric per output channel, ``qweight`` int8 ``[N, K]`` and ``scales`` float32
  ``[N]`` (value = q * scale, q in -127..127).
- ``q4``: 4 bits in groups of 32, 64 or 128 along the input, symmetric (value =
  (q - 8) * scale) or with zero points (value = q * scale + min); ``qweight`` uint8
  ``[N, K / 2]`` in the nibble order of :mod:`llm_kernels.reference`, float16 ``scales`` and
  ``mins`` ``[N, K / G]``.

Each scheme also says how the product treats activations (``activations``): ``"float"``
(weight-only), ``"int8"`` (rounded per block of 32, as llama.cpp does for its 4- and 8-bit
blocks) or ``"dynamic"`` (W8A8: one int8 scale per token, computed at run time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

SchemeName = Literal["int8", "q4"]
ActivationMode = Literal["float", "int8", "dynamic"]
GROUP_SIZES = (32, 64, 128)
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # q4 range shrinkage tried per group


@dataclass(frozen=True)
class Scheme:
    """A quantization scheme: ``name`` (``int8`` or ``q4``), q4's ``group_size`` and
    ``zero_points``, and the ``activations`` mode of the product (default: ``"float"`` for
    int8, weight-only; ``"int8"`` for q4, as llama.cpp). Raises ``ValueError`` when invalid."""

    name: SchemeName
    group_size: int = 64
    zero_points: bool = False
    activations: ActivationMode | None = None

    def __post_init__(self) -> None:
        if self.name not in ("int8", "q4"):
            raise ValueError(f"unknown scheme {self.name!r}; expected 'int8' or 'q4'")
        if self.name == "q4" and self.group_size not in GROUP_SIZES:
            raise ValueError(f"q4 group_size must be 32, 64 or 128, got {self.group_size}")
        if self.activations is None:
            object.__setattr__(self, "activations", "float" if self.name == "int8" else "int8")
        if self.activations not in ("float", "int8", "dynamic"):
            raise ValueError(
                f"activations must be 'float', 'int8' or 'dynamic', got {self.activations!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The scheme as stored in a checkpoint's config (``quantization.scheme``)."""
        out = asdict(self)
        if self.name == "int8":
            del out["group_size"], out["zero_points"]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scheme:
        """The scheme from :meth:`to_dict`'s form. Raises ``ValueError`` on a bad entry."""
        if not isinstance(raw, dict) or "name" not in raw:
            raise ValueError(f"a quantization scheme needs a 'name', got {raw!r}")
        known = {"name", "group_size", "zero_points", "activations"}
        extra = sorted(set(raw) - known)
        if extra:
            raise ValueError(f"unknown quantization scheme field {extra[0]!r}")
        return cls(**raw)

    def describe(self) -> str:
        """A short human-readable name: ``int8``, ``int8 (W8A8 dynamic)``, ``q4 g64 zp``."""
        if self.name == "int8":
            return {
                "float": "int8",
                "int8": "int8 (int8 activations)",
                "dynamic": "int8 (W8A8 dynamic)",
            }[self.activations or "float"]
        return f"q4 g{self.group_size}{' zp' if self.zero_points else ''}"


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``weight`` ``[N, K]`` -> ``qweight`` int8 ``[N, K]``,
    ``scales`` float32 ``[N]`` (scale = max |w| / 127 per row; an all-zero row gets scale 0)."""
    w = weight.detach().float()  # (N, K)
    scales = w.abs().amax(dim=1) / 127  # (N,)
    inv = torch.where(scales > 0, 1 / scales, torch.zeros_like(scales))
    q = torch.round(w * inv.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)  # (N, K)
    return q, scales


def quantize_q4(
    weight: torch.Tensor,
    group_size: int = 64,
    zero_points: bool = False,
    importance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """4-bit groups: ``weight`` ``[N, K]`` -> ``(qweight uint8 [N, K/2], scales float16
    [N, K/G], mins float16 [N, K/G] or None)``.

    Per group, ranges shrunk by each of :data:`CLIP_RATIOS` are tried and the one with the
    least squared error kept, each input channel's error weighted by ``importance`` (``[K]``,
    e.g. the mean squared activation from calibration, as llama.cpp's importance matrix;
    uniform when None). Symmetric groups map the value of largest magnitude to -8 (GGUF Q4_0's
    rule); groups with zero points span [min, max] in 15 steps. Values are rounded with the
    float16 scale they are stored with. Raises ``ValueError`` when ``K`` is not a multiple of
    ``group_size``.
    """
    if group_size not in GROUP_SIZES:
        raise ValueError(f"q4 group_size must be 32, 64 or 128, got {group_size}")
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"q4: in_features {k} is not a multiple of group_size {group_size}")
    wg = weight.detach().float().reshape(n, k // group_size, group_size)  # (N, K/G, G)
    imp = (
        torch.ones(1, 1, group_size)
        if importance is None
        else importance.float().reshape(1, k // group_size, group_size)
    )  # (1 | 1, 1 | K/G, G)
    best = None
    for ratio in CLIP_RATIOS:
        q, s, m = _round_q4(wg, ratio, zero_points)
        deq = q.float() * s.float().unsqueeze(-1)
        deq = deq + m.float().unsqueeze(-1) if m is not None else deq - 8 * s.float().unsqueeze(-1)
        err = (imp * (deq - wg) ** 2).sum(-1)  # (N, K/G)
        if best is None:
            best = [err, q, s, m]
            continue
        better = err < best[0]  # (N, K/G)
        best[0] = torch.where(better, err, best[0])
        best[1] = torch.where(better.unsqueeze(-1), q, best[1])
        best[2] = torch.where(better, s, best[2])
        if m is not None:
            best[3] = torch.where(better, m, best[3])
    _, q, scales, mins = best
    half = group_size // 2
    packed = q[..., :half] | (q[..., half:] << 4)  # (N, K/G, G/2): element j low, j + G/2 high
    return packed.reshape(n, k // 2), scales, mins


def _round_q4(
    wg: torch.Tensor, ratio: float, zero_points: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One try of :func:`quantize_q4`: nibbles ``uint8 [N, K/G, G]``, scales, mins."""
    if zero_points:
        lo, hi = wg.amin(-1) * ratio, wg.amax(-1) * ratio  # (N, K/G)
        lo = torch.minimum(lo, torch.zeros_like(lo))  # zero stays representable
        hi = torch.maximum(hi, torch.zeros_like(hi))
        scales = ((hi - lo) / 15).half()
        mins = lo.half()
        s = scales.float().unsqueeze(-1)
        inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
        q = torch.round((wg - mins.float().unsqueeze(-1)) * inv).clamp_(0, 15).to(torch.uint8)
        return q, scales, mins
    idx = wg.abs().argmax(-1, keepdim=True)
    extreme = wg.gather(-1, idx).squeeze(-1) * ratio  # (N, K/G): signed value of largest |w|
    scales = (extreme / -8).half()
    s = scales.float().unsqueeze(-1)
    inv = torch.where(s != 0, 1 / s, torch.zeros_like(s))
    q = (torch.round(wg * inv) + 8).clamp_(0, 15).to(torch.uint8)
    return q, scales, None
