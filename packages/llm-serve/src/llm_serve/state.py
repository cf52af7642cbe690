"""The server's configuration and state: the model, its engine, the counters; and the step from
a validated request body to engine requests (sampling keywords, submission, error mapping)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from llm_infer import (
    LLM,
    ContextLengthError,
    EngineBusyError,
    EngineClosedError,
    SamplingError,
)
from llm_infer.engine import Engine, RequestHandle

from llm_serve.errors import APIError
from llm_serve.metrics import Metrics
from llm_serve.schemas import MAX_N, SamplingRequest

SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "min_tokens",
    "ignore_eos",
)


@dataclass(frozen=True)
class ServerConfig:
    """How the server runs.

    ``model_name`` is the id clients name in ``model``; ``api_key`` (None: no auth) is checked
    as ``Authorization: Bearer <key>`` on every route but ``/health``; bodies above
    ``max_body_bytes`` get a 413 and ``max_tokens`` above ``max_tokens_cap`` a 400; a request
    that omits ``max_tokens`` may run to the end of the context, within the cap. CORS is on
    only for ``cors_origins``. ``max_batch`` and ``max_queue`` size the engine; a full queue is
    answered 503 with ``Retry-After: retry_after_s``.
    """

    model_name: str
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_tokens_cap: int = 4096
    cors_origins: tuple[str, ...] = ()
    retry_after_s: int = 1


class Server:
    """The model, its engine and the counters behind the routes."""

    def __init__(self, llm: LLM, config: ServerConfig) -> None:
        self.llm = llm
        self.config = config
        self.metrics = Metrics(lambda: self.engine.stats() if self.engine is not None else None)
        self.created = int(time.time())
        self.engine: Engine | None = None
        self.embed_executor: ThreadPoolExecutor | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the engine (and the embedding thread) for the duration of the block."""
        engine = Engine(
            self.llm,
            max_batch=self.config.max_batch,
            max_queue=self.config.max_queue,
            observer=self.metrics.observe,
        )
        self.embed_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="llm-serve-embed"
        )
        try:
            async with engine:
                self.engine = engine
                yield
        finally:
            self.engine = None
            self.embed_executor.shutdown(wait=True)

    @property
    def context_length(self) -> int:
        return self.llm.context_length

    def check_model(self, model: str | None) -> None:
        """Raise a 404 ``model_not_found`` unless ``model`` is the served one (or omitted)."""
        if model is not None and model != self.config.model_name:
            raise APIError(
                404,
                f"The model `{model}` does not exist; this server serves `{self.config.model_name}`.",
                param="model",
                code="model_not_found",
            )

    def encode(self, prompt: str | Sequence[int], param: str) -> list[int]:
        """Checked token ids of a text or ids prompt; raises a 400 naming ``param``."""
        try:
            return self.llm.encode_prompt(prompt)
        except ValueError as exc:
            raise APIError(400, str(exc), param=param, code="invalid_value") from None

    def sampling(
        self, body: SamplingRequest, prompt_tokens: int, max_tokens: int | None, **extra: Any
    ) -> dict[str, Any]:
        """llm-infer sampling keywords for ``body``, validated (raises a 400 naming the field).

        Without ``max_tokens``, the reply may fill the context left, within the server's cap.
        """
        cap = self.config.max_tokens_cap
        if max_tokens is not None and max_tokens > cap:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}, above this server's cap of {cap}",
                param="max_tokens",
                code="invalid_value",
            )
        if max_tokens is None:
            max_tokens = max(1, min(cap, self.context_length - prompt_tokens))
        params: dict[str, Any] = {"max_tokens": max_tokens, **extra}
        params.update(
            {k: getattr(body, k) for k in SAMPLING_FIELDS if getattr(body, k) is not None}
        )
        if body.logit_bias:
            params["logit_bias"] = body.logit_bias  # keys parsed (and checked) by llm-infer
        with translate_errors("prompt"):
            params["logit_bias"] = dict(self.llm.sampling_params(**params).logit_bias)
        return params

    def submit(
        self,
        prompts: Sequence[list[int]],
        params: dict[str, Any],
        n: int,
        seed: int | None,
        param: str,
    ) -> list[RequestHandle]:
        """Submit ``n`` choices of each prompt (choice ``i`` seeded ``seed + i``).

        All or none: when one cannot be queued, those already queued are cancelled. Raises
        400 (context length), 503 (queue full, or not running).
        """
        if len(prompts) * n > MAX_N:
            raise APIError(
                400,
                f"{len(prompts)} prompts x n={n} is {len(prompts) * n} choices; the limit is {MAX_N}",
                param="n",
            )
        if self.engine is None:
            raise APIError(503, "the engine is not running", code="engine_not_running")
        handles: list[RequestHandle] = []
        try:
            with translate_errors(param, retry_after=self.config.retry_after_s):
                for ids in prompts:
                    for i in range(n):
                        choice_seed = None if seed is None else _wrap_seed(seed + i)
                        handles.append(self.engine.submit(ids, **params, seed=choice_seed))
        except APIError:
            for handle in handles:
                handle.cancel()
            raise
        return handles

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The chat template applied to ``messages``; a template error is a 400."""
        try:
            return self.llm.chat_prompt(messages)
        except ValueError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None

    def token_text(self, token_id: int) -> str:
        return self.llm.tokenizer.decode([token_id])


def _wrap_seed(seed: int) -> int:
    """``seed`` folded into the signed 64-bit range."""
    return (seed + 2**63) % 2**64 - 2**63


@contextlib.contextmanager
def translate_errors(param: str, *, retry_after: int = 1) -> Iterator[None]:
    """llm-infer's errors as API errors: bad values and over-long prompts 400, a full queue 503."""
    try:
        yield
    except ContextLengthError as exc:
        raise APIError(400, str(exc), param=param, code="context_length_exceeded") from None
    except SamplingError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None
    except EngineBusyError as exc:
        raise APIError(
            503, str(exc), code="server_busy", headers={"Retry-After": str(retry_after)}
        ) from None
    except EngineClosedError as exc:
        raise APIError(503, str(exc), code="engine_not_running") from None
    except ValueError as exc:
        raise APIError(400, str(exc), param=param, code="invalid_value") from None
