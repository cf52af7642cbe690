"""Shared references for llm-kernels' tests."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama import modeling_llama as hf


def _hf_attention(q, k, v, mask, scale=None):
    """HF transformers' eager attention (GQA through its ``repeat_kv``) in float64, with the
    additive form of our boolean ``mask``, back in ``q.dtype``; a query that sees no key gets
    zeros (our rule; HF's softmax would give NaN)."""
    module = torch.nn.Module()
    module.num_key_value_groups = q.shape[1] // k.shape[1]
    module.training = False
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    additive = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    out, _ = hf.eager_attention_forward(
        module, q.double(), k.double(), v.double(), additive, scaling=scale
    )
    return out.transpose(1, 2).nan_to_num(0.0).to(q.dtype)  # HF returns (B, T, H, D)


@pytest.fixture
def hf_attention():
    """``hf_attention(q, k, v, mask, scale=None)``: the reference attention of HF transformers."""
    return _hf_attention
