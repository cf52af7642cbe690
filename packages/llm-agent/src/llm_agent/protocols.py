"""What llm-agent needs from a chat model (structural; producers don't import us).

The local engine and ``llm_serve.client.AsyncClient`` both satisfy it, so the agent works the
same against either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol


class ChatModel(Protocol):
    """Streams the assistant's reply to ``messages`` (``[{"role", "content"}]``) as text deltas.

    ``sampling`` holds OpenAI-named keywords (``temperature``, ``max_tokens``, ``stop``, ...).
    """

    def stream(
        self, messages: Sequence[Mapping[str, Any]], **sampling: Any
    ) -> AsyncIterator[str]: ...
