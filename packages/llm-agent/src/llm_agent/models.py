"""Chat models for the agent: any OpenAI-compatible server (llm-serve included) through the
``openai`` package, and a model loaded in this process through llm-infer (the ``local``
extra). Both satisfy :class:`llm_agent.protocols.ChatModel`."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from llm_agent.calls import CLOSE, OPEN
from llm_agent.errors import AgentError


class OpenAIChatModel:
    """An OpenAI-compatible ``/v1/chat/completions`` server, streamed.

    ``native_tools``: the agent passes ``tools=`` and OpenAI-shaped tool messages; each
    streamed ``tool_calls`` entry comes back as ``<tool_call>{"id", "name", "arguments"}``
    text once it is complete. Errors raise :class:`AgentError` with one line.
    """

    native_tools = True

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        http_client: Any = None,
    ) -> None:
        """``http_client``: an ``httpx.AsyncClient`` for the ``openai`` client to use (tests
        pass one with a mock transport)."""
        import openai

        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else f"{base}/v1"
        self.model = model
        self.client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused",
            timeout=timeout,
            max_retries=0,
            http_client=http_client,
        )

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], **sampling: Any
    ) -> AsyncIterator[str]:
        """Yield the reply's text, each tool call written as a ``<tool_call>`` block."""
        import openai

        params = {k: v for k, v in sampling.items() if v is not None}
        pending: dict[int, dict[str, str]] = {}
        try:
            model = self.model or await self._first_model()
            stream = await self.client.chat.completions.create(
                model=model, messages=list(messages), stream=True, **params
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        yield delta.content
                    for part in delta.tool_calls or ():
                        for done in sorted(i for i in pending if i < part.index):
                            yield _written(pending.pop(done))
                        entry = pending.setdefault(
                            part.index, {"id": "", "name": "", "arguments": ""}
                        )
                        entry["id"] = part.id or entry["id"]
                        if part.function is not None:
                            entry["name"] += part.function.name or ""
                            entry["arguments"] += part.function.arguments or ""
            for done in sorted(pending):
                yield _written(pending.pop(done))
        except openai.APIStatusError as exc:
            raise AgentError(
                f"{self.base_url} answered {exc.status_code}: {_message(exc)}"
            ) from None
        except openai.APIConnectionError as exc:
            why = "timed out" if isinstance(exc, openai.APITimeoutError) else "connection failed"
            raise AgentError(
                f"cannot reach {self.base_url}: {why} (is the server running?)"
            ) from None

    async def _first_model(self) -> str:
        models = [m.id async for m in self.client.models.list()]
        if not models:
            raise AgentError(f"{self.base_url} serves no model")
        self.model = models[0]
        return self.model

    async def aclose(self) -> None:
        await self.client.close()


def _written(entry: dict[str, str]) -> str:
    call = {"id": entry["id"], "name": entry["name"], "arguments": entry["arguments"]}
    return f"{OPEN}{json.dumps(call)}{CLOSE}"


def _message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"]).splitlines()[0]
    return str(exc.message).splitlines()[0]


class LocalChatModel:
    """A model loaded through ``llm_infer.load(source)`` (a checkpoint, HF folder, GGUF or
    ``demo``), run by its batching engine in this process. Needs ``llm-agent[local]``."""

    native_tools = False

    def __init__(self, source: str) -> None:
        try:
            import llm_infer
        except ImportError:
            raise AgentError(
                "a local model needs llm-infer: pip install 'llm-agent[local]' (or use --server URL)"
            ) from None
        self._errors = llm_infer.InferError
        self._engine_type = llm_infer.Engine
        try:
            self.llm = llm_infer.load(source)
        except (llm_infer.InferError, OSError, ValueError) as exc:
            raise AgentError(str(exc).splitlines()[0]) from None
        self.source = source
        self._engine: Any = None

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], **sampling: Any
    ) -> AsyncIterator[str]:
        """Yield the reply's text deltas. Raises :class:`AgentError` for bad sampling or a
        conversation longer than the context."""
        if self._engine is None:
            self._engine = self._engine_type(self.llm)
            await self._engine.start()
        params = {k: v for k, v in sampling.items() if v is not None}
        try:
            async for delta in self._engine.stream_chat(list(messages), **params):
                yield delta
        except (self._errors, ValueError) as exc:
            raise AgentError(str(exc).splitlines()[0]) from None

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None
