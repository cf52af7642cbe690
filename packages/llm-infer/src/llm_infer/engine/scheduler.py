"""The engine's scheduler: which requests run, which prompt chunks and decode rows each step
holds, and what each step's sampled tokens mean. Pure and synchronous: no asyncio, no model.

Every step, requests join and leave the running batch (continuous batching): waiting requests
are admitted while a batch slot and their worst-case KV blocks are free; each step runs up to
``prefill_chunk`` prompt tokens (chunked prefill) and one decode token for every request past
its prompt. Full blocks are offered to the pool's prefix cache, so requests whose prompts
start alike share them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from llm_infer.errors import ContextLengthError, EngineBusyError
from llm_infer.generate import Completion, Generation
from llm_infer.paged import BlockPool, block_hashes

COUNTERS = (
    "finished",
    "cancelled",
    "failed",
    "prompt_tokens",
    "generated_tokens",
    "prefix_hits",
    "prefix_cached_tokens",
    "steps",
)


@dataclass(eq=False)
class Request:
    """One request's place in the engine: its generation, blocks and progress."""

    id: int
    generation: Generation
    submitted: float  # time.perf_counter() at submission
    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # prefix hashes of the full blocks so far
    computed: int = 0  # tokens whose KV is in the cache
    first_token: float | None = None  # perf_counter() when its first token was sampled
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


@dataclass
class Plan:
    """One step's work: prompt chunks ``(request, first token, end)`` and decode rows."""

    prefills: list[tuple[Request, int, int]] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)

    @property
    def requests(self) -> list[Request]:
        return [r for r, _, _ in self.prefills] + self.decodes

    def __bool__(self) -> bool:
        return bool(self.prefills or self.decodes)


@dataclass(frozen=True)
class Output:
    """What a request's reader gets: new ``text``, then its ``completion`` (finished), or the
    ``error`` that ended it."""

    request: Request
    text: str = ""
    completion: Completion | None = None
    error: Exception | None = None


class Scheduler:
    """Admission, step plans and bookkeeping over a :class:`~llm_infer.paged.BlockPool`.

    Call :meth:`schedule` for the next step's :class:`Plan` (and the outputs of requests
    reaped since), run the plan, then give the sampled text to :meth:`update`.
    """

    def __init__(
        self,
        pool: BlockPool,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_chunk: int = 256,
        prefix_cache: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError(
                f"max_batch and prefill_chunk must be >= 1 and max_queue >= 0, got {max_batch}, {prefill_chunk}, {max_queue}"
            )
        self.pool = pool
        self.max_batch, self.max_queue = max_batch, max_queue
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.ttft_total = 0.0
        self.ttft_count = 0

    @property
    def has_work(self) -> bool:
        """Whether any request waits or runs."""
        return bool(self.waiting or self.running)

    # -- requests ----------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queue ``request``. Raises :class:`ContextLengthError` when it can never fit the
        cache and :class:`EngineBusyError` when the queue is full."""
        total = len(request.prompt) + request.generation.params.max_tokens
        if self.pool.blocks_for(total) > self.pool.usable_blocks:
            raise ContextLengthError(
                f"the engine's KV cache holds {self.pool.usable_blocks * self.pool.block_size} tokens, "
                f"this request needs {total}"
            )
        queued = len(self.waiting) - max(0, self.max_batch - len(self.running))
        if queued >= self.max_queue:  # requests that will wait for a free slot in the batch
            raise EngineBusyError(
                f"engine busy: {max(queued, 0)} requests queued behind a full batch "
                f"(max_batch={self.max_batch}, max_queue={self.max_queue}); retry later"
            )
        self.waiting.append(request)

    def cancel(self, request: Request) -> None:
        """Mark ``request`` cancelled; it leaves at the next :meth:`schedule`."""
        if not request.generation.finished:
            request.cancelled = True

    def cancel_all(self) -> None:
        for request in [*self.waiting, *self.running]:
            self.cancel(request)

    # -- a step ------------------------------------------------------------------------------

    def schedule(self) -> tuple[Plan, list[Output]]:
        """Reap cancelled requests, admit waiting ones, and plan the next step (blocks are
        allocated for every token it writes). Returns the plan (maybe empty) and the outputs
        of the reaped requests."""
        outputs = self._reap()
        self._admit()
        plan = Plan()
        budget = self.prefill_chunk
        for request in self.running:
            if request.prefilling:
                if budget == 0:
                    continue
                end = min(len(request.prompt), request.computed + budget)
                budget -= end - request.computed
                plan.prefills.append((request, request.computed, end))
                self._grow(request, end)
            else:
                plan.decodes.append(request)
                self._grow(request, request.computed + 1)
        return plan, outputs

    def update(
        self, plan: Plan, sampled: list[tuple[Request, str | Exception]], now: float
    ) -> list[Output]:
        """Advance the requests of ``plan`` by the step just run; ``sampled`` holds, for each
        request that sampled a token, the text it completed or the error that sampling raised.
        ``now`` is the step's end (``time.perf_counter()``). Returns the readers' outputs."""
        self.counters["steps"] += 1
        for request, _, end in plan.prefills:
            request.computed = end
        for request in plan.decodes:
            request.computed += 1
        outputs = []
        for request, delta in sampled:
            if isinstance(delta, Exception):
                outputs.append(self._fail(request, delta))
                continue
            self.counters["generated_tokens"] += 1
            if request.first_token is None:
                request.first_token = now
                self.ttft_total += now - request.submitted
                self.ttft_count += 1
            self._register_blocks(request)
            if request.cancelled:
                continue  # reaped (and its text dropped) at the next schedule
            if request.generation.finished:
                outputs.append(self._finish(request, delta))
            elif delta:
                outputs.append(Output(request, delta))
        return outputs

    def fail(self, requests: list[Request], exc: Exception) -> list[Output]:
        """End ``requests`` with ``exc`` (a failed step fails its requests, not the engine)."""
        return [self._fail(r, exc) for r in dict.fromkeys(requests)]

    def abort(self, exc: Exception) -> list[Output]:
        """End every request with ``exc`` (the engine itself failed)."""
        requests = [*self.waiting, *self.running]
        self.waiting.clear()
        return [self._fail(r, exc) for r in requests]

    # -- internals ---------------------------------------------------------------------------

    def _reap(self) -> list[Output]:
        outputs = []
        for request in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(request)
            outputs.append(self._finish(request, request.generation.cancel()))
        for request in [r for r in self.running if r.cancelled]:
            finished = request.generation.finished  # it may have ended in the step just run
            outputs.append(self._finish(request, "" if finished else request.generation.cancel()))
        return outputs

    def _outstanding(self, request: Request) -> int:
        """Blocks ``request`` may still allocate before it finishes."""
        total = len(request.prompt) + request.generation.params.max_tokens
        return max(0, self.pool.blocks_for(total) - len(request.blocks))

    def _admit(self) -> None:
        """Move waiting requests into the batch while a slot and their worst-case blocks are free."""
        pool = self.pool
        while self.waiting and len(self.running) < self.max_batch:
            request = self.waiting[0]
            hashes = block_hashes(
                request.prompt, pool.block_size, (len(request.prompt) - 1) // pool.block_size
            )
            cached = pool.lookup(hashes) if self.prefix_cache else []
            request.blocks, request.hashes = cached, hashes[: len(cached)]
            reserved = sum(self._outstanding(r) for r in self.running)
            if pool.num_free - reserved < self._outstanding(request):
                pool.release(cached)
                request.blocks, request.hashes = [], []
                return
            self.waiting.popleft()
            request.computed = len(cached) * pool.block_size
            request.generation.cached_tokens = request.computed
            if cached:
                self.counters["prefix_hits"] += 1
                self.counters["prefix_cached_tokens"] += request.computed
            self.counters["prompt_tokens"] += len(request.prompt)
            self.running.append(request)

    def _grow(self, request: Request, tokens: int) -> None:
        while len(request.blocks) * self.pool.block_size < tokens:
            request.blocks.append(self.pool.allocate())

    def _register_blocks(self, request: Request) -> None:
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

    def _finish(self, request: Request, text: str) -> Output:
        reason = request.generation.finish_reason
        self.counters["cancelled" if reason == "cancelled" else "finished"] += 1
        self._drop(request)
        return Output(request, text, completion=request.generation.completion())

    def _fail(self, request: Request, exc: Exception) -> Output:
        self.counters["failed"] += 1
        self._drop(request)
        return Output(request, error=exc)

    def _drop(self, request: Request) -> None:
        if request in self.running:
            self.running.remove(request)
        self.pool.release(request.blocks)
        request.blocks = []
