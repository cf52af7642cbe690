"""RoPE inverse frequencies for every scaling variant, defined as HF transformers defines them.

:func:`rope_frequencies` returns ``(inv_freq [D/2], attention_scaling)``; the tables are
``cos(p * inv_freq) * attention_scaling`` (see :func:`llm_kernels.rope_cos_sin`).
"""

from __future__ import annotations

import math

import torch

from llm_core.config import ModelConfig


def default_inv_freq(base: float, dim: int) -> torch.Tensor:
    """``1 / base^(2i/d)`` for ``i < d/2``, float32."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def ntk_base(base: float, scale: float, dim: int) -> float:
    """NTK-aware base for a context scale ``s``: ``base * s^(d/(d-2))``."""
    return base * scale ** (dim / (dim - 2))


def rope_frequencies(config: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_scaling)`` of ``config``'s RoPE; ``seq_len`` is the current length
    (used by ``dynamic_ntk`` only)."""
    dim, base, scaling = config.head_dim, config.rope_base, config.rope_scaling
    if scaling is None:
        return default_inv_freq(base, dim), 1.0
    factor, l0 = config.rope_factor, config.training_seq_len
    if scaling.type == "linear":
        return default_inv_freq(base, dim) / factor, 1.0
    if scaling.type == "ntk":
        return default_inv_freq(ntk_base(base, factor, dim), dim), 1.0
    if scaling.type == "dynamic_ntk":
        length = max(seq_len or l0, l0)
        return default_inv_freq(ntk_base(base, factor * length / l0 - (factor - 1), dim), dim), 1.0
    if scaling.type == "yarn":
        return _yarn(config, factor, l0)
    return _llama3(config, factor, l0)


def _yarn(config: ModelConfig, factor: float, l0: int) -> tuple[torch.Tensor, float]:
    s, dim, base = config.rope_scaling, config.head_dim, config.rope_base
    assert s is not None

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if s.attention_factor is not None:
        attention_factor = s.attention_factor
    elif s.mscale and s.mscale_all_dim:
        attention_factor = mscale(factor, s.mscale) / mscale(factor, s.mscale_all_dim)
    else:
        attention_factor = mscale(factor)

    def correction_dim(
        rotations: float,
    ) -> float:  # the dimension that turns `rotations` times in l0
        return dim * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = default_inv_freq(base, dim)  # (D/2,)
    interpolation = extrapolation / factor
    inv_freq = interpolation * ramp + extrapolation * (1 - ramp)
    return inv_freq, float(attention_factor)


def _llama3(config: ModelConfig, factor: float, l0: int) -> tuple[torch.Tensor, float]:
    s = config.rope_scaling
    assert s is not None
    inv_freq = default_inv_freq(config.rope_base, config.head_dim)
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = l0 / s.low_freq_factor, l0 / s.high_freq_factor
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (l0 / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0
