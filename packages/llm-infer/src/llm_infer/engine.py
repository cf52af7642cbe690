"""``Engine``: many requests at once on one model, with asyncio.

Every step, requests join and leave the running batch (continuous batching): waiting requests
are admitted while a batch slot and enough KV blocks are free; each step runs up to
``prefill_chunk`` prompt tokens (chunked prefill) and one decode token for every request past
its prompt. The KV cache is paged (:mod:`llm_infer.paged`): full blocks are shared between
requests with a common prompt prefix and kept in an LRU prefix cache afterwards.

The model runs on one worker thread; all bookkeeping happens on the event loop between steps,
so a cancelled request leaves the batch, and frees its blocks, at the end of the current step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from llm_infer.errors import ContextLengthError, EngineBusyError, EngineClosedError
from llm_infer.generation import Completion, Generation
from llm_infer.llm import LLM, Messages, Prompt
from llm_infer.paged import BlockPool, PagedKVCache, block_hashes


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


@dataclass(eq=False)
class _Request:
    id: int
    generation: Generation
    outbox: asyncio.Queue[str | Completion | BaseException]
    submitted: float
    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # prefix hashes of the full blocks so far
    computed: int = 0  # tokens whose KV is in the cache
    first_token: float | None = None
    cancelled: bool = False

    @property
    def prompt(self) -> list[int]:
        return self.generation.prompt_ids

    @property
    def tokens(self) -> list[int]:
        return self.generation.prompt_ids + self.generation.token_ids

    @property
    def prefilling(self) -> bool:
        return self.computed < len(self.prompt)


class RequestHandle:
    """A submitted request: iterate it for text deltas, ``await result()``, or ``cancel()``."""

    def __init__(self, engine: Engine, request: _Request) -> None:
        self._engine = engine
        self._request = request
        self._completion: Completion | None = None

    @property
    def id(self) -> int:
        return self._request.id

    def cancel(self) -> None:
        """Stop the request; it leaves the batch (finish reason ``cancelled``) within one step."""
        self._engine._cancel(self._request)

    async def __aiter__(self) -> AsyncIterator[str]:
        while self._completion is None:
            item = await self._request.outbox.get()
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


@dataclass
class _Plan:
    prefills: list[tuple[_Request, int, int]]  # (request, first token, end) of each prompt chunk
    decodes: list[_Request]


class Engine:
    """Continuous batching over an :class:`~llm_infer.llm.LLM` (use ``async with Engine(llm)``).

    ``max_batch`` requests run at once; up to ``max_queue`` more wait for a slot, beyond which
    :meth:`submit` raises :class:`~llm_infer.errors.EngineBusyError`. The paged cache holds
    ``cache_tokens`` tokens (default: 4 x the model's context) in blocks of ``block_size``.
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
    ) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError(
                f"max_batch and prefill_chunk must be >= 1 and max_queue >= 0, got {max_batch}, {prefill_chunk}, {max_queue}"
            )
        self.llm = llm
        self.max_batch, self.max_queue = max_batch, max_queue
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache
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
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._ids = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._broken: EngineClosedError | None = None  # set if the scheduling loop failed
        self._executor: ThreadPoolExecutor | None = None
        self._counters = dict.fromkeys(
            (
                "finished",
                "cancelled",
                "failed",
                "prompt_tokens",
                "generated_tokens",
                "prefix_hits",
                "prefix_cached_tokens",
                "steps",
            ),
            0,
        )
        self._busy_s = 0.0
        self._ttft_total = 0.0
        self._ttft_count = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduling loop on the running event loop (idempotent)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="llm-infer-engine",
                # a new thread starts from OpenMP's defaults: give it this process's setting
                initializer=torch.set_num_threads,
                initargs=(torch.get_num_threads(),),
            )
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        """Cancel every request and stop the loop."""
        if self._task is None:
            return
        for request in [*self._waiting, *self._running]:
            self._cancel(request)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._reap()
        assert self._executor is not None
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
        if self._task is None or self._wake is None:
            raise EngineClosedError(
                "the engine is not running: use `async with engine:` or `await engine.start()`"
            )
        if self._broken is not None:
            raise self._broken
        llm = self.llm
        sp = llm.sampling_params(**params)
        ids = llm.encode_prompt(prompt)
        sp = llm.fit(sp, 0, len(ids))
        need = self.pool.blocks_for(len(ids) + sp.max_tokens)
        if need > self.pool.usable_blocks:
            raise ContextLengthError(
                f"the engine's KV cache holds {self.pool.usable_blocks * self.pool.block_size} tokens, "
                f"this request needs {len(ids) + sp.max_tokens}"
            )
        queued = len(self._waiting) - max(0, self.max_batch - len(self._running))
        if queued >= self.max_queue:  # requests that will wait for a free slot in the batch
            raise EngineBusyError(
                f"engine busy: {max(queued, 0)} requests queued behind a full batch "
                f"(max_batch={self.max_batch}, max_queue={self.max_queue}); retry later"
            )
        request = _Request(
            id=next(self._ids),
            generation=Generation(ids, sp, llm.tokenizer, llm.vocab_size),
            outbox=asyncio.Queue(),
            submitted=time.perf_counter(),
        )
        self._waiting.append(request)
        self._wake.set()
        return RequestHandle(self, request)

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
        c = self._counters
        return EngineStats(
            queue_depth=len(self._waiting),
            running=len(self._running),
            finished=c["finished"],
            cancelled=c["cancelled"],
            failed=c["failed"],
            prompt_tokens=c["prompt_tokens"],
            generated_tokens=c["generated_tokens"],
            tokens_per_s=c["generated_tokens"] / self._busy_s if self._busy_s else 0.0,
            mean_time_to_first_token_s=self._ttft_total / self._ttft_count
            if self._ttft_count
            else 0.0,
            prefix_hits=c["prefix_hits"],
            prefix_cached_tokens=c["prefix_cached_tokens"],
            blocks_in_use=self.pool.usable_blocks - self.pool.num_free,
            blocks_total=self.pool.usable_blocks,
            steps=c["steps"],
        )

    # -- the loop (event-loop thread) ------------------------------------------------------

    async def _loop(self) -> None:
        try:
            await self._schedule()
        except Exception as exc:  # a fault in the bookkeeping itself: no reader may wait forever
            self._broken = EngineClosedError(f"the engine's scheduling loop failed: {exc!r}")
            self._broken.__cause__ = exc
            for request in [*self._waiting, *self._running]:
                request.outbox.put_nowait(self._broken)
                self._counters["failed"] += 1
            self._waiting.clear()
            self._running.clear()

    async def _schedule(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._reap()
            self._admit()
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            plan = self._plan()
            started = time.perf_counter()
            try:
                events = await loop.run_in_executor(self._executor, self._step, plan)
            except Exception as exc:  # a failed step fails the requests in it, not the engine
                for request in {r for r, _, _ in plan.prefills} | set(plan.decodes):
                    self._fail(request, exc)
                continue
            self._busy_s += time.perf_counter() - started
            self._counters["steps"] += 1
            self._deliver(plan, events)

    def _cancel(self, request: _Request) -> None:
        if not request.generation.finished:
            request.cancelled = True
            if self._wake is not None:
                self._wake.set()

    def _reap(self) -> None:
        """Finish cancelled requests: out of the queue or batch, blocks freed."""
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            self._finish(request, request.generation.cancel())
        for request in [r for r in self._running if r.cancelled]:
            finished = request.generation.finished  # it may have ended in the step just run
            self._finish(request, "" if finished else request.generation.cancel())

    def _outstanding(self, request: _Request) -> int:
        """Blocks ``request`` may still allocate before it finishes."""
        total = len(request.prompt) + request.generation.params.max_tokens
        return max(0, self.pool.blocks_for(total) - len(request.blocks))

    def _admit(self) -> None:
        """Move waiting requests into the batch while a slot and their worst-case blocks are free."""
        pool = self.pool
        while self._waiting and len(self._running) < self.max_batch:
            request = self._waiting[0]
            hashes = block_hashes(
                request.prompt, pool.block_size, (len(request.prompt) - 1) // pool.block_size
            )
            cached = pool.lookup(hashes) if self.prefix_cache else []
            request.blocks, request.hashes = cached, hashes[: len(cached)]
            reserved = sum(self._outstanding(r) for r in self._running)
            if pool.num_free - reserved < self._outstanding(request):
                pool.release(cached)
                request.blocks, request.hashes = [], []
                return
            self._waiting.popleft()
            request.computed = len(cached) * pool.block_size
            request.generation.cached_tokens = request.computed
            if cached:
                self._counters["prefix_hits"] += 1
                self._counters["prefix_cached_tokens"] += request.computed
            self._counters["prompt_tokens"] += len(request.prompt)
            self._running.append(request)

    def _plan(self) -> _Plan:
        """This step's prompt chunks (within ``prefill_chunk`` tokens) and decode rows; blocks
        are allocated for every token the step writes."""
        budget = self.prefill_chunk
        prefills, decodes = [], []
        for request in self._running:
            if request.prefilling:
                if budget == 0:
                    continue
                end = min(len(request.prompt), request.computed + budget)
                budget -= end - request.computed
                prefills.append((request, request.computed, end))
                self._grow(request, end)
            else:
                decodes.append(request)
                self._grow(request, request.computed + 1)
        return _Plan(prefills, decodes)

    def _grow(self, request: _Request, tokens: int) -> None:
        while len(request.blocks) * self.pool.block_size < tokens:
            request.blocks.append(self.pool.allocate())

    def _deliver(self, plan: _Plan, events: list[tuple[_Request, str | Exception]]) -> None:
        now = time.perf_counter()
        for request, _, end in plan.prefills:
            request.computed = end
        for request in plan.decodes:
            request.computed += 1
        for request, delta in events:
            if isinstance(delta, Exception):
                self._fail(request, delta)
                continue
            self._counters["generated_tokens"] += 1
            if request.first_token is None:
                request.first_token = now
                self._ttft_total += now - request.submitted
                self._ttft_count += 1
            self._register_blocks(request)
            if request.cancelled:
                continue  # reaped (and its text dropped) at the start of the next step
            if delta:
                request.outbox.put_nowait(delta)
            if request.generation.finished:
                self._finish(request, "")

    def _register_blocks(self, request: _Request) -> None:
        """Offer the request's newly completed blocks to the prefix cache."""
        if not self.prefix_cache:
            return
        bs = self.pool.block_size
        full = request.computed // bs
        if full > len(request.hashes):
            tokens = request.tokens
            parent = request.hashes[-1] if request.hashes else 0
            for i in range(len(request.hashes), full):
                parent = hash((parent, tuple(tokens[i * bs : (i + 1) * bs])))
                request.hashes.append(parent)
                self.pool.register(request.blocks[i], parent)

    def _finish(self, request: _Request, text: str) -> None:
        if text:
            request.outbox.put_nowait(text)
        request.outbox.put_nowait(request.generation.completion())
        self._counters[
            "cancelled" if request.generation.finish_reason == "cancelled" else "finished"
        ] += 1
        self._drop(request)

    def _fail(self, request: _Request, exc: Exception) -> None:
        """End ``request`` with ``exc``, which its reader raises; its slot and blocks are freed."""
        request.outbox.put_nowait(exc)
        self._counters["failed"] += 1
        self._drop(request)

    def _drop(self, request: _Request) -> None:
        if request in self._running:
            self._running.remove(request)
        self.pool.release(request.blocks)
        request.blocks = []

    # -- the step (worker thread: tensors only, no bookkeeping) ----------------------------

    @torch.inference_mode()
    def _step(self, plan: _Plan) -> list[tuple[_Request, str | Exception]]:
        model, device = self.llm.model, self.llm.model.device
        events: list[tuple[_Request, str | Exception]] = []
        for request, start, end in plan.prefills:
            cache = PagedKVCache(self.pool, [request.blocks], [start])
            tokens = torch.tensor([request.prompt[start:end]], device=device)  # (1, t)
            positions = torch.arange(start, end, device=device).unsqueeze(0)  # (1, t)
            logits = model.forward(tokens, cache, positions, logits_to_keep=1)[:, -1]  # (1, V)
            if end == len(request.prompt):
                events.append((request, _sample(request.generation, logits[0])))
        if plan.decodes:
            cache = PagedKVCache(
                self.pool, [r.blocks for r in plan.decodes], [r.computed for r in plan.decodes]
            )
            tokens = torch.tensor(
                [[r.tokens[r.computed]] for r in plan.decodes], device=device
            )  # (B, 1)
            positions = torch.tensor([[r.computed] for r in plan.decodes], device=device)  # (B, 1)
            logits = model.forward(tokens, cache, positions)[:, -1]  # (B, V)
            for row, request in enumerate(plan.decodes):
                events.append((request, _sample(request.generation, logits[row])))
        return events


def _sample(generation: Generation, logits: torch.Tensor) -> str | Exception:
    """The text of the next token, or the error that sampling it raised (which fails that
    request alone: the others in the batch go on)."""
    try:
        return generation.append(generation.next_token(logits))
    except Exception as exc:
        return exc
