"""``Engine``: many requests at once on one model, with asyncio (a thin front end).

The :class:`~llm_infer.engine.scheduler.Scheduler` decides each step (continuous batching,
chunked prefill, a paged KV cache with a prefix cache); the
:class:`~llm_infer.engine.runner.ModelRunner` runs it. Both run on the engine's one worker
thread, which steps for as long as there is work (plan, run, update, plan, ...) and hands each
step's outputs to the event loop without waiting for it, as vLLM's engine core does: a step
no longer waits for the loop to wake, take the outputs and hand the next plan back (about
0.3 ms a step on a 2-core VM, 2% of a small model's decode step). This front end validates
requests, adds and cancels them (under the lock the worker takes for its bookkeeping), and
moves outputs to their readers. A cancelled request leaves the batch, and frees its blocks,
at the end of the current step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
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
        if self._completion is None:
            # from now on only the completion: the worker stops handing over each token's
            # text, so the event loop does not wake once a token for a reader that skips it
            self._engine._completion_only.add(self._request)
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
        # requests whose reader awaits only the completion (RequestHandle.result): added on
        # the event loop, read by the worker, which then posts no text deltas of theirs (one
        # posted meanwhile is merely skipped by the reader)
        self._completion_only: set[Request] = set()
        self._ids = itertools.count()
        # the worker and the event loop share the scheduler: its bookkeeping (schedule,
        # update, add, cancel, stats) happens under this lock, never the step itself
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set when there may be new work (or closing)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None  # done when the worker has returned
        self._closing = False
        self._broken: EngineClosedError | None = None  # set if the scheduling loop failed
        self._busy_s = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread for the running event loop (idempotent)."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._stopped = self._loop.create_future()
            self._closing = False
            self._wake.clear()
            self._thread = threading.Thread(
                target=self._work,
                # a new thread starts from OpenMP's defaults: give it this process's setting
                args=(torch.get_num_threads(),),
                name="llm-infer-engine",
                daemon=True,  # an engine never closed does not keep the process alive
            )
            self._thread.start()

    async def close(self) -> None:
        """Cancel every request and stop: the step in flight (on the worker) finishes first,
        then the requests are reaped and their blocks freed."""
        if self._thread is None:
            return
        assert self._stopped is not None
        with self._lock:
            self._closing = True
            self.scheduler.cancel_all()
        self._wake.set()
        await asyncio.shield(self._stopped)  # the worker drains its step, reaps, and returns
        self._thread.join()
        self._thread = None

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
        if self._thread is None or self._closing:
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
        outbox: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        with self._lock:
            if self._broken is not None:  # the worker failed since the check above
                raise self._broken
            self.scheduler.add(request)
        self._outboxes[request] = outbox  # before any output: those arrive on this loop, later
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
        with self._lock:
            return self._stats()

    def _stats(self) -> EngineStats:
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

    # -- the worker thread ------------------------------------------------------------------

    def _cancel(self, request: Request) -> None:
        with self._lock:
            self.scheduler.cancel(request)
        self._wake.set()

    def _work(self, threads: int) -> None:
        torch.set_num_threads(threads)
        try:
            self._steps()
        except Exception as exc:  # a fault in the bookkeeping itself: no reader may wait forever
            broken = EngineClosedError(f"the engine's scheduling loop failed: {exc!r}")
            broken.__cause__ = exc
            with self._lock:
                self._broken = broken
                outputs = self.scheduler.abort(broken)
            self._post(outputs)
        finally:
            self._post_stopped()

    def _steps(self) -> None:
        """Plan, run and update steps while there is work; sleep while there is none."""
        scheduler = self.scheduler
        while True:
            with self._lock:
                plan, reaped = scheduler.schedule()
                stop = self._closing and not scheduler.has_work
                if not plan and not stop:
                    self._wake.clear()  # under the lock: an add or cancel after it sets it again
            self._post(reaped)
            if stop:
                return
            if not plan:
                self._wake.wait()
                continue
            started = time.perf_counter()
            try:
                sampled = self.runner.execute(plan)
            except Exception as exc:  # a failed step fails the requests in it, not the engine
                with self._lock:
                    outputs = scheduler.fail(plan.requests, exc)
                self._post(outputs)
                continue
            now = time.perf_counter()
            with self._lock:
                self._busy_s += now - started
                outputs = scheduler.update(plan, sampled, now)
            self._post(outputs)

    def _post(self, outputs: list[Output]) -> None:
        """Hand ``outputs`` to the event loop (it delivers them between its other work)."""
        quiet = self._completion_only
        if quiet:
            outputs = [
                o
                for o in outputs
                if o.request not in quiet or o.completion is not None or o.error is not None
            ]
        if outputs and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._deliver, outputs)
            except RuntimeError:  # the loop is closed (the engine was never closed): stop
                with self._lock:
                    self._closing = True
                    self.scheduler.cancel_all()

    def _post_stopped(self) -> None:
        def stopped() -> None:
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)

        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self._loop.call_soon_threadsafe(stopped)

    def _deliver(self, outputs: list[Output]) -> None:
        for out in outputs:
            outbox = self._outboxes.get(out.request)
            if outbox is None:
                continue
            if out.error is not None:
                outbox.put_nowait(out.error)
                del self._outboxes[out.request]
                self._completion_only.discard(out.request)
                continue
            if out.text:
                outbox.put_nowait(out.text)
            if out.completion is not None:
                outbox.put_nowait(out.completion)
                del self._outboxes[out.request]
                self._completion_only.discard(out.request)
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
