"""What llm-repl needs from a chat backend (structural; producers don't import us).

The local engine and ``llm_serve.client.AsyncClient`` both satisfy it, so the REPL works the
same against either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol


class ChatBackend(Protocol):
    """Streams the assistant's reply to ``messages`` (``[{"role", "content"}]``) as text deltas.

    ``sampling`` holds OpenAI-named keywords (``temperature``, ``max_tokens``, ``stop``, ...).
    """

    def stream(
        self, messages: Sequence[Mapping[str, Any]], **sampling: Any
    ) -> AsyncIterator[str]: ...
