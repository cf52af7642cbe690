"""What llm-infer needs from a tokenizer and from a model (structural; producers don't import us)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch


class TextStream(Protocol):
    """An incremental decoder: text comes out only once its UTF-8 is complete."""

    def add(self, ids: Iterable[int]) -> str: ...

    def finish(self) -> str: ...


class Tokenizer(Protocol):
    """Text to ids and back, the end-of-sequence ids, and the chat template."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_stream(self, *, skip_special_tokens: bool = False) -> TextStream: ...

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False
    ) -> str: ...


class ModelConfig(Protocol):
    """The fields of a model's configuration that inference reads."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_seq_len(self) -> int: ...

    @property
    def n_layer(self) -> int: ...

    @property
    def kv_heads(self) -> int: ...

    @property
    def head_dim(self) -> int: ...


class CausalLM(Protocol):
    """A decoder-only model: ``forward(tokens [B, T], cache, positions [B, T]) -> logits [B, T, V]``.

    ``logits_to_keep=n > 0`` asks for the logits of the last ``n`` positions only (``[B, n, V]``,
    HF's argument): prefill keeps one.

    ``cache`` is anything with llm-core's ``KVCache`` methods (``append``, ``update``,
    ``key_positions``, ``next_positions``, ``reset``); llm-infer's paged cache is one.
    """

    @property
    def config(self) -> ModelConfig: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def forward(
        self,
        tokens: torch.Tensor,
        cache: Any = None,
        positions: torch.Tensor | None = None,
        *,
        logits_to_keep: int = 0,
    ) -> torch.Tensor: ...

    def new_cache(
        self, batch_size: int, capacity: int | None = None, kind: str = "static"
    ) -> Any: ...
