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
    Tool calls come back inside the text as ``<tool_call>{"name", "arguments"}</tool_call>``.
    A model that also has ``native_tools = True`` takes ``tools=`` (OpenAI's schema) and
    OpenAI's ``tool_calls`` / ``role: "tool"`` messages instead of text ones (see
    :class:`llm_agent.models.OpenAIChatModel`).
    """

    def stream(
        self, messages: Sequence[Mapping[str, Any]], **sampling: Any
    ) -> AsyncIterator[str]: ...
