"""The engine's Scheduler on its own: no asyncio, no model; the steps' sampled tokens are given."""

from __future__ import annotations

import asyncio
import time

import pytest
from llm_infer import ContextLengthError, EngineBusyError, SamplingParams
from llm_infer.engine import Engine, Request, Scheduler
from llm_infer.generate import Generation
from llm_infer.paged import BlockPool


def make_pool(blocks: int = 9, block_size: int = 4) -> BlockPool:
    return BlockPool(n_layer=1, n_kv_head=1, head_dim=2, num_blocks=blocks, block_size=block_size)


def make_request(tokenizer, i: int, prompt: list[int], max_tokens: int) -> Request:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return Request(i, Generation(prompt, params, tokenizer, tokenizer.vocab_size), 0.0)


def step(scheduler: Scheduler, token: int, now: float = 1.0):
    """Plan a step and 'run' it: every request that reaches a new token samples ``token``."""
    plan, reaped = scheduler.schedule()
    sampled = []
    for request, _, end in plan.prefills:
        if end == len(request.prompt):
            sampled.append((request, request.generation.append(token)))
    for request in plan.decodes:
        sampled.append((request, request.generation.append(token)))
    return plan, reaped + scheduler.update(plan, sampled, now)


def test_chunked_prefill_then_batched_decode_then_finish(tokenizer):
    scheduler = Scheduler(make_pool(), max_batch=2, prefill_chunk=6)
    a = make_request(tokenizer, 0, list(range(1, 9)), max_tokens=2)  # 8 prompt tokens
    b = make_request(tokenizer, 1, [5, 6, 7], max_tokens=3)
    scheduler.add(a)
    scheduler.add(b)
    plan, _ = step(scheduler, 42)
    assert [(r.id, s, e) for r, s, e in plan.prefills] == [(0, 0, 6)]  # the budget is spent
    assert a.computed == 6 and b.computed == 0 and len(a.blocks) == 2
    plan, _ = step(scheduler, 42)
    assert [(r.id, s, e) for r, s, e in plan.prefills] == [(0, 6, 8), (1, 0, 3)]
    assert a.generation.token_ids == [42] and b.generation.token_ids == [42]
    plan, outputs = step(scheduler, 43)
    assert plan.decodes == [a, b] and not plan.prefills
    done = {o.request.id: o.completion for o in outputs if o.completion is not None}
    assert done[0].token_ids == [42, 43] and done[0].finish_reason == "length"
    assert 1 not in done and scheduler.running == [b]
    _, outputs = step(scheduler, 44)
    assert outputs[-1].completion.token_ids == [42, 43, 44]
    assert not scheduler.has_work
    assert scheduler.pool.num_free == scheduler.pool.usable_blocks  # every block back
    assert scheduler.counters["generated_tokens"] == 5 and scheduler.counters["steps"] == 4


def test_admission_waits_for_a_slot_and_for_blocks(tokenizer):
    scheduler = Scheduler(make_pool(blocks=5, block_size=4), max_batch=4)  # 4 usable blocks
    big = make_request(tokenizer, 0, list(range(1, 9)), max_tokens=4)  # 12 tokens: 3 blocks
    other = make_request(tokenizer, 1, [1, 2], max_tokens=4)  # 6 tokens: 2 blocks
    scheduler.add(big)
    scheduler.add(other)
    scheduler.schedule()
    assert scheduler.running == [big] and list(scheduler.waiting) == [other]
    while big in scheduler.running:
        step(scheduler, 7)
    step(scheduler, 7)
    assert other in scheduler.running or other.generation.finished


def test_cancel_reaps_with_a_cancelled_completion_and_frees_blocks(tokenizer):
    scheduler = Scheduler(make_pool(), max_batch=1, max_queue=1)
    a = make_request(tokenizer, 0, [1, 2, 3], max_tokens=5)
    b = make_request(tokenizer, 1, [4, 5], max_tokens=5)
    scheduler.add(a)
    scheduler.add(b)
    with pytest.raises(EngineBusyError, match="1 requests queued"):
        scheduler.add(make_request(tokenizer, 2, [1], max_tokens=1))
    step(scheduler, 9)
    scheduler.cancel(a)
    scheduler.cancel(b)
    plan, reaped = scheduler.schedule()
    assert not plan
    assert {o.request.id: o.completion.finish_reason for o in reaped} == {
        0: "cancelled",
        1: "cancelled",
    }
    assert scheduler.counters["cancelled"] == 2
    assert scheduler.pool.num_free == scheduler.pool.usable_blocks


def test_prefix_cache_hit_skips_the_shared_blocks(tokenizer):
    scheduler = Scheduler(make_pool(), max_batch=1)
    shared = [3, 1, 4, 1, 5, 9, 2, 6]  # two full blocks of 4
    first = make_request(tokenizer, 0, [*shared, 7], max_tokens=1)
    scheduler.add(first)
    step(scheduler, 8)
    second = make_request(tokenizer, 1, [*shared, 8, 8], max_tokens=1)
    scheduler.add(second)
    plan, _ = scheduler.schedule()
    assert plan.prefills == [(second, 8, 10)]
    assert second.generation.cached_tokens == 8 and scheduler.counters["prefix_hits"] == 1


def test_a_request_larger_than_the_cache_is_refused(tokenizer):
    scheduler = Scheduler(make_pool(blocks=3, block_size=4))  # 8 tokens
    with pytest.raises(ContextLengthError, match="holds 8 tokens, this request needs 9"):
        scheduler.add(make_request(tokenizer, 0, [1, 2, 3, 4], max_tokens=5))


def test_close_waits_for_the_step_in_flight_before_freeing_blocks(llm):
    """close() during a step: the worker finishes that step before the requests are reaped."""

    async def main():
        engine = Engine(llm, block_size=8)
        await engine.start()
        execute = engine.runner.execute
        inside = asyncio.Event()
        loop = asyncio.get_running_loop()
        freed_during_step = []

        def slow_execute(plan):
            loop.call_soon_threadsafe(inside.set)
            before = engine.pool.num_free
            out = execute(plan)
            time.sleep(0.2)  # a slow step: close() is called meanwhile
            freed_during_step.append(engine.pool.num_free != before)
            return out

        engine.runner.execute = slow_execute
        handle = engine.submit([1, 2, 3], temperature=0, max_tokens=50, ignore_eos=True)
        await inside.wait()
        await engine.close()
        return await handle.result(), engine.stats(), freed_during_step

    completion, stats, freed_during_step = asyncio.run(main())
    assert completion.finish_reason == "cancelled"
    assert freed_during_step and not any(freed_during_step)
    assert stats.blocks_in_use == 0 and stats.running == 0
