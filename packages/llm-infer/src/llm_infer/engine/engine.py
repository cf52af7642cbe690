"""``Engine``: many requests at once on one model, with asyncio (a thin front end).

The :class:`~llm_infer.engine.scheduler.Scheduler` decides each step (continuous batching,
chunked prefill, a paged KV cache with a prefix cache); the
:class:`~llm_infer.engine.runner.ModelRunner` runs it on one worker thread; this front end
validates requests, moves outputs to their readers, and owns the loop between them. All
bookkeeping happens on the event loop between steps, so a cancelled request leaves the batch,
and frees its blocks, at the end of the current step.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from llm_infer.engine.runner import ModelRunner
from llm_infer.engine.scheduler import Output, Request, Scheduler
from llm_infer.errors import EngineClosedError
from llm_infer.generate import Completion, Generation
from llm_infer.llm import LLM, Messages, Prompt
from llm_infer.paged import BlockPool


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started; ``tokens_per_s`` is generated tokens per busy second."""

    queue_depth: int
    running: int
    finished: int
    cancelled: int
    failed: int  # ended by an error in their step or their sampling
    prompt_tokens: int
    generated_tokens: int
    tokens_per_s: float
    mean_time_to_first_token_s: float
    prefix_hits: int
    prefix_cached_tokens: int
    blocks_in_use: int
    blocks_total: int
    steps: int


@dataclass(frozen=True)
class RequestTiming:
    """One finished request's latencies (seconds) and token counts, for metrics."""

    time_to_first_token_s: float | None  # None: ended before its first token
    time_per_output_token_s: float | None  # mean gap between tokens after the first
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str


class RequestHandle:
    """A submitted request: iterate it for text deltas, ``await result()``, or ``cancel()``."""

    def __init__(
        self,
        engine: Engine,
        request: Request,
        outbox: asyncio.Queue[str | Completion | BaseException],
    ) -> None:
        self._engine = engine
        self._request = request
        self._outbox = outbox
        self._completion: Completion | None = None

    @property
    def id(self) -> int:
        return self._request.id

    def cancel(self) -> None:
        """Stop the request; it leaves the batch (finish reason ``cancelled``) within one step."""
        self._engine._cancel(self._request)

    async def __aiter__(self) -> AsyncIterator[str]:
        while self._completion is None:
            item = await self._outbox.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Completion):
                self._completion = item
            elif item:
                yield item

    async def result(self) -> Completion:
        """The completion, once finished (text deltas not yet read are skipped)."""
        async for _ in self:
            pass
        assert self._completion is not None
        return self._completion


class Engine:
    """Continuous batching over an :class:`~llm_infer.llm.LLM` (use ``async with Engine(llm)``).

    ``max_batch`` requests run at once; up to ``max_queue`` more wait for a slot, beyond which
    :meth:`submit` raises :class:`~llm_infer.errors.EngineBusyError`. The paged cache holds
    ``cache_tokens`` tokens (default: 4 x the model's context) in blocks of ``block_size``.
    ``observer``, if given, is called on the event loop with each finished request's
    :class:`RequestTiming` (the server's metrics).
    """

    def __init__(
        self,
        llm: LLM,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        block_size: int = 16,
        cache_tokens: int | None = None,
        prefill_chunk: int = 256,
        prefix_cache: bool = True,
        observer: Callable[[RequestTiming], None] | None = None,
    ) -> None:
        self.llm = llm
        cfg = llm.model.config
        tokens = cache_tokens or 4 * cfg.max_seq_len
        self.pool = BlockPool(
            n_layer=cfg.n_layer,
            n_kv_head=cfg.kv_heads,
            head_dim=cfg.head_dim,
            num_blocks=-(-tokens // block_size) + 1,
            block_size=block_size,
            dtype=llm.model.dtype,
            device=llm.model.device,
        )
        self.scheduler = Scheduler(
            self.pool,
            max_batch=max_batch,
            max_queue=max_queue,
            prefill_chunk=prefill_chunk,
            prefix_cache=prefix_cache,
        )
        self.runner = ModelRunner(llm.model, self.pool, llm.step)
        self.observer = observer
        self._outboxes: dict[Request, asyncio.Queue[str | Completion | BaseException]] = {}
        self._ids = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._broken: EngineClosedError | None = None  # set if the scheduling loop failed
        self._executor: ThreadPoolExecutor | None = None
        self._busy_s = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduling loop on the running event loop (idempotent)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._closing = False
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="llm-infer-engine",
                # a new thread starts from OpenMP's defaults: give it this process's setting
                initializer=torch.set_num_threads,
                initargs=(torch.get_num_threads(),),
            )
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        """Cancel every request and stop: the step in flight (on the worker) finishes first,
        then the requests are reaped and their blocks freed."""
        if self._task is None:
            return
        assert self._wake is not None and self._executor is not None
        self._closing = True
        self.scheduler.cancel_all()
        self._wake.set()
        await asyncio.shield(self._task)  # the loop drains the worker, reaps, and returns
        self._executor.shutdown(wait=True)
        self._task = None

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests --------------------------------------------------------------------------

    def submit(self, prompt: Prompt, **params: Any) -> RequestHandle:
        """Queue a request; sampling keywords as for ``LLM.generate``.

        Raises ``SamplingError`` or ``ValueError`` for bad input, ``ContextLengthError`` when
        it cannot fit the model's context or the cache, ``EngineBusyError`` when the queue is
        full and ``EngineClosedError`` when the engine is not started.
        """
        if self._task is None or self._wake is None or self._closing:
            raise EngineClosedError(
                "the engine is not running: use `async with engine:` or `await engine.start()`"
            )
        if self._broken is not None:
            raise self._broken
        llm = self.llm
        sp = llm.sampling_params(**params)
        ids = llm.encode_prompt(prompt)
        sp = llm.fit(sp, 0, len(ids))
        request = Request(
            id=next(self._ids),
            generation=Generation(ids, sp, llm.tokenizer, llm.vocab_size),
            submitted=time.perf_counter(),
        )
        self.scheduler.add(request)
        outbox: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        self._outboxes[request] = outbox
        self._wake.set()
        return RequestHandle(self, request, outbox)

    async def generate(self, prompt: Prompt, **params: Any) -> Completion:
        """The completion of ``prompt``; see :meth:`submit` for errors."""
        handle = self.submit(prompt, **params)
        try:
            return await handle.result()
        finally:
            handle.cancel()

    async def stream(self, prompt: Prompt, **params: Any) -> AsyncIterator[str]:
        """Text deltas of ``prompt``'s completion; leaving the loop early cancels the request."""
        handle = self.submit(prompt, **params)
        try:
            async for delta in handle:
                yield delta
        finally:
            handle.cancel()

    async def chat(self, messages: Messages, **params: Any) -> Completion:
        """The assistant's reply to ``messages``, through the chat template."""
        return await self.generate(self.llm.chat_prompt(messages), **params)

    def stream_chat(self, messages: Messages, **params: Any) -> AsyncIterator[str]:
        """:meth:`chat`, streamed."""
        return self.stream(self.llm.chat_prompt(messages), **params)

    def stats(self) -> EngineStats:
        """A snapshot of the counters."""
        sched = self.scheduler
        c = sched.counters
        return EngineStats(
            queue_depth=len(sched.waiting),
            running=len(sched.running),
            finished=c["finished"],
            cancelled=c["cancelled"],
            failed=c["failed"],
            prompt_tokens=c["prompt_tokens"],
            generated_tokens=c["generated_tokens"],
            tokens_per_s=c["generated_tokens"] / self._busy_s if self._busy_s else 0.0,
            mean_time_to_first_token_s=sched.ttft_total / sched.ttft_count
            if sched.ttft_count
            else 0.0,
            prefix_hits=c["prefix_hits"],
            prefix_cached_tokens=c["prefix_cached_tokens"],
            blocks_in_use=self.pool.usable_blocks - self.pool.num_free,
            blocks_total=self.pool.usable_blocks,
            steps=c["steps"],
        )

    # -- the loop (event-loop thread) ------------------------------------------------------

    def _cancel(self, request: Request) -> None:
        self.scheduler.cancel(request)
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        try:
            await self._schedule()
        except Exception as exc:  # a fault in the bookkeeping itself: no reader may wait forever
            self._broken = EngineClosedError(f"the engine's scheduling loop failed: {exc!r}")
            self._broken.__cause__ = exc
            self._deliver(self.scheduler.abort(self._broken))

    async def _schedule(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            plan, reaped = self.scheduler.schedule()
            self._deliver(reaped)
            if self._closing and not self.scheduler.has_work:
                return
            if not plan:
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.perf_counter()
            try:
                sampled = await loop.run_in_executor(self._executor, self.runner.execute, plan)
            except Exception as exc:  # a failed step fails the requests in it, not the engine
                self._deliver(self.scheduler.fail(plan.requests, exc))
                continue
            now = time.perf_counter()
            self._busy_s += now - started
            self._deliver(self.scheduler.update(plan, sampled, now))

    def _deliver(self, outputs: list[Output]) -> None:
        for out in outputs:
            outbox = self._outboxes.get(out.request)
            if outbox is None:
                continue
            if out.error is not None:
                outbox.put_nowait(out.error)
                del self._outboxes[out.request]
                continue
            if out.text:
                outbox.put_nowait(out.text)
            if out.completion is not None:
                outbox.put_nowait(out.completion)
                del self._outboxes[out.request]
                if self.observer is not None:
                    self.observer(_timing(out.request, out.completion))


def _timing(request: Request, completion: Completion) -> RequestTiming:
    first = request.first_token
    n = completion.usage.completion_tokens
    per_token = None
    if first is not None and n > 1:
        per_token = (time.perf_counter() - first) / (n - 1)
    return RequestTiming(
        time_to_first_token_s=None if first is None else first - request.submitted,
        time_per_output_token_s=per_token,
        prompt_tokens=completion.usage.prompt_tokens,
        completion_tokens=n,
        cached_tokens=completion.usage.cached_tokens,
        finish_reason=completion.finish_reason,
    )
