"""What llm-serve needs beyond llm-infer's ``CausalLM`` (structural; producers don't import us)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class HiddenStatesModel(Protocol):
    """A model that exposes its final hidden states, for ``/v1/embeddings`` (llm-core's
    ``Transformer`` is one): ``hidden_states(tokens [B, T]) -> [B, T, n_embd]``."""

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor: ...
