"""The mean-pool embedder over an llm-core model (the ``core`` extra: torch, llm-core, llm-infer).

Importing this module imports torch; :func:`llm_rag.embedders.load_embedder` imports it only
for a ``core:`` spec, so ``import llm_rag`` stays torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_rag.errors import RagError
from llm_rag.index import normalize

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    raise RagError("the core embedder needs torch: pip install 'llm-rag[core]'") from None


class MeanPoolEmbedder:
    """Mean of a causal model's final-norm hidden states over each text's tokens, L2-normalised.

    ``model`` has ``hidden_states(tokens [B, T]) -> [B, T, C]`` and ``config.max_seq_len``
    (llm-core's ``Transformer``); ``tokenizer`` has ``encode``. Texts are truncated to the
    model's context, as sentence-transformers truncate to ``max_seq_length``. A batch is padded
    on the right: under causal attention real tokens never see the padding, so padding changes
    nothing and the mean runs over real tokens only.
    """

    def __init__(self, model: Any, tokenizer: Any, *, spec: str = "core", batch_size: int = 16):
        self.model, self.tokenizer, self.spec, self.batch_size = model, tokenizer, spec, batch_size
        self._dim = int(model.config.n_embd)
        self.max_tokens = int(model.config.max_seq_len)

    @classmethod
    def from_source(cls, source: str) -> MeanPoolEmbedder:
        """Load a model with llm-infer's ``load`` (checkpoint dir, HF dir, ``demo``).

        Raises :class:`RagError` when llm-infer is missing or the model does not load.
        """
        try:
            from llm_infer import LoadError, load
        except ImportError:
            raise RagError("core:SRC needs llm-infer: pip install 'llm-rag[core]'") from None
        try:
            llm = load(source)
        except LoadError as exc:
            raise RagError(f"embedder core:{source}: {exc}") from None
        return cls(llm.model, llm.tokenizer, spec=f"core:{source}")

    @property
    def dim(self) -> int:
        return self._dim

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32 unit vectors; an empty text maps to zeros."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)  # (n, C)
        encoded = [self.tokenizer.encode(t)[: self.max_tokens] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths batched
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            rows = [i for i in order[start : start + self.batch_size] if encoded[i]]
            if not rows:
                continue
            T = max(len(encoded[i]) for i in rows)
            tokens = torch.zeros((len(rows), T), dtype=torch.long, device=device)  # (B, T)
            mask = torch.zeros((len(rows), T, 1), dtype=torch.float32, device=device)  # (B, T, 1)
            for b, i in enumerate(rows):
                tokens[b, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[b, : len(encoded[i])] = 1.0
            hidden = self.model.hidden_states(tokens).float()  # (B, T, C)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)  # (B, C)
            out[rows] = pooled.cpu().numpy()
        return normalize(out)
