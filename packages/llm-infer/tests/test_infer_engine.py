"""Engine: continuous batching gives each request its solo result; cancellation, queue, prefix cache."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from llm_infer import EngineBusyError, EngineClosedError
from llm_infer.engine import Engine
from llm_infer.paged import BlockPool, PagedKVCache

PROMPTS = [[(7 * i + 3 * j) % 300 + 1 for j in range(4 + 9 * i)] for i in range(8)]  # 4..67 tokens


def run(coro):
    return asyncio.run(coro)


async def solo(llm, prompt, **params):
    async with Engine(llm, block_size=8) as engine:
        return await engine.generate(prompt, **params)


def test_eight_concurrent_requests_equal_their_solo_results(llm):
    params = [dict(temperature=0, max_tokens=10 + 3 * i, ignore_eos=True) for i in range(8)]
    want = [run(solo(llm, p, **kw)) for p, kw in zip(PROMPTS, params, strict=True)]

    async def together():
        async with Engine(llm, block_size=8, prefill_chunk=32) as engine:
            results = await asyncio.gather(
                *(engine.generate(p, **kw) for p, kw in zip(PROMPTS, params, strict=True))
            )
            return results, engine.stats()

    got, stats = run(together())
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert g.text == w.text
    assert stats.finished == 8 and stats.running == 0 and stats.queue_depth == 0
    assert stats.generated_tokens == sum(kw["max_tokens"] for kw in params)
    assert stats.blocks_in_use == 0
    assert stats.tokens_per_s > 0 and stats.mean_time_to_first_token_s > 0


def test_engine_matches_llm_generate(llm):
    want = llm.generate(PROMPTS[3], temperature=0, max_tokens=20, ignore_eos=True)
    assert (
        run(solo(llm, PROMPTS[3], temperature=0, max_tokens=20, ignore_eos=True)).token_ids
        == want.token_ids
    )


def test_engine_decodes_through_the_llms_native_step(llm, monkeypatch):
    """The engine's decode rows run the LLM's own step (one llm-kernels call for the layers
    where it serves the model, on the paged cache), not a slower path of their own."""
    from llm_infer.native_step import NativeDecoder

    if llm.step.kind != "native":
        pytest.skip("the native step does not serve this model here")
    calls = []
    original = NativeDecoder.__call__

    def counted(self, token, position, cache):
        calls.append((token.shape[0], type(cache).__name__))
        return original(self, token, position, cache)

    monkeypatch.setattr(NativeDecoder, "__call__", counted)
    got = run(solo(llm, PROMPTS[2], temperature=0, max_tokens=6, ignore_eos=True))
    assert len(got.token_ids) == 6
    assert calls == [(1, "PagedKVCache")] * 5  # the first token comes from the prefill


def test_cancelling_one_does_not_disturb_the_others(llm):
    params = dict(temperature=0, max_tokens=24, ignore_eos=True)
    want = [run(solo(llm, p, **params)) for p in PROMPTS[:4]]

    async def main():
        async with Engine(llm, block_size=8) as engine:
            handles = [engine.submit(p, **params) for p in PROMPTS[:4]]
            victim = handles[1]
            seen = []
            async for delta in victim:
                seen.append(delta)
                if len(seen) == 2:
                    victim.cancel()
            results = [await h.result() for h in handles]
            return results, engine.stats()

    results, stats = run(main())
    assert results[1].finish_reason == "cancelled"
    assert results[1].usage.completion_tokens < 24
    for i in (0, 2, 3):
        assert results[i].token_ids == want[i].token_ids
    assert stats.cancelled == 1 and stats.finished == 3 and stats.blocks_in_use == 0


def test_leaving_a_stream_early_cancels_within_a_step(llm):
    async def main():
        async with Engine(llm) as engine:
            stream = engine.stream(PROMPTS[0], temperature=0, max_tokens=200, ignore_eos=True)
            async for _ in stream:
                break
            await stream.aclose()
            steps = engine.stats().steps
            while engine.stats().running and engine.stats().steps <= steps + 1:
                await asyncio.sleep(0.01)
            return engine.stats()

    stats = run(main())
    assert stats.cancelled == 1 and stats.running == 0 and stats.blocks_in_use == 0


def test_bounded_queue_says_busy(llm):
    async def main(max_batch, max_queue):
        async with Engine(llm, max_batch=max_batch, max_queue=max_queue) as engine:
            handles = [
                engine.submit(PROMPTS[0], max_tokens=50) for _ in range(max_batch + max_queue)
            ]
            with pytest.raises(
                EngineBusyError,
                match=rf"engine busy: {max_queue} requests queued behind a full batch "
                rf"\(max_batch={max_batch}, max_queue={max_queue}\)",
            ):
                engine.submit(PROMPTS[0])
            for h in handles:
                h.cancel()

    run(main(1, 2))
    run(main(2, 0))  # no queue: the batch's free slots still take requests
    with pytest.raises(EngineClosedError):
        Engine(llm).submit("x")


def test_a_failing_request_does_not_fail_the_batch(llm):
    params = dict(temperature=0, max_tokens=12, ignore_eos=True)
    want = run(solo(llm, PROMPTS[2], **params))

    async def main():
        async with Engine(llm, block_size=8) as engine:
            good, bad = engine.submit(PROMPTS[2], **params), engine.submit(PROMPTS[5], **params)
            generation = bad._request.generation
            real = generation.next_token

            def broken(logits):
                if len(generation.token_ids) == 3:
                    raise RuntimeError("probability tensor contains nan")
                return real(logits)

            generation.next_token = broken
            with pytest.raises(RuntimeError, match="contains nan"):
                await bad.result()
            return await good.result(), engine.stats()

    got, stats = run(main())
    assert got.token_ids == want.token_ids
    assert stats.running == 0 and stats.blocks_in_use == 0
    assert (stats.finished, stats.cancelled, stats.failed) == (1, 0, 1)


def test_the_worker_steps_while_the_event_loop_is_busy(llm):
    """Steps do not wait for the event loop: a loop held up (a slow handler in the server)
    does not hold up decoding, and the outputs made meanwhile all arrive afterwards."""
    params = dict(temperature=0, max_tokens=40, ignore_eos=True)

    async def main():
        async with Engine(llm, block_size=8) as engine:
            handle = engine.submit(PROMPTS[2], **params)
            while engine.stats().steps < 2:
                await asyncio.sleep(0.001)
            before = engine.stats().steps
            deadline = time.perf_counter() + 30
            while engine.stats().steps < before + 10 and time.perf_counter() < deadline:
                time.sleep(0.01)  # blocks the event loop
            during = engine.stats().steps - before
            return during, await handle.result()

    during, completion = run(main())
    assert during >= 10
    want = llm.generate(PROMPTS[2], **params)
    assert completion.token_ids == want.token_ids and completion.text == want.text


def test_a_reader_of_the_completion_alone_is_not_woken_for_every_token(llm):
    """``result()`` (``generate``, the server's non-streamed requests) wants the completion
    only: the worker stops handing over each token's text, which would wake the event loop
    (and take a core from the step) once a token for nothing; a streamed reader gets every
    delta, and both get the same completion."""
    params = dict(temperature=0, max_tokens=24, ignore_eos=True)

    async def main():
        async with Engine(llm, block_size=8) as engine:
            texts: dict[int, int] = {}
            deliver = engine._deliver

            def counting(outputs):
                for out in outputs:
                    if out.text and out.completion is None:
                        texts[out.request.id] = texts.get(out.request.id, 0) + 1
                deliver(outputs)

            engine._deliver = counting
            quiet = engine.submit(PROMPTS[4], **params)
            whole = await quiet.result()
            streamed = engine.submit(PROMPTS[4], **params)
            deltas = [d async for d in streamed]
            return texts.get(quiet.id, 0), texts.get(streamed.id, 0), whole, deltas

    quiet_texts, streamed_texts, whole, deltas = run(main())
    assert quiet_texts <= 2 and streamed_texts >= 20
    assert (
        "".join(deltas) == whole.text
        and whole.token_ids == llm.generate(PROMPTS[4], **params).token_ids
    )


def test_an_engine_never_closed_stops_when_its_event_loop_ends(llm):
    async def main():
        engine = Engine(llm, block_size=8)
        await engine.start()
        engine.submit(PROMPTS[1], temperature=0, max_tokens=200, ignore_eos=True)
        await asyncio.sleep(0.05)
        return engine  # no close(): asyncio.run closes the loop under it

    engine = run(main())
    engine._thread.join(timeout=30)
    assert not engine._thread.is_alive()
    assert engine.stats().running == 0 and engine.stats().blocks_in_use == 0


def test_a_fault_in_the_scheduling_loop_ends_every_request_instead_of_hanging(llm):
    params = dict(temperature=0, max_tokens=12, ignore_eos=True)

    async def main():
        async with Engine(llm, block_size=8) as engine:
            real = engine.scheduler.schedule
            calls = 0

            def schedule():
                nonlocal calls
                calls += 1
                if calls == 3:
                    raise KeyError("bookkeeping bug")
                return real()

            engine.scheduler.schedule = schedule
            handles = [engine.submit(PROMPTS[i], **params) for i in range(3)]
            for handle in handles:
                with pytest.raises(EngineClosedError, match="scheduling loop failed.*bookkeeping"):
                    await asyncio.wait_for(handle.result(), timeout=30)
            with pytest.raises(EngineClosedError, match="scheduling loop failed"):
                engine.submit(PROMPTS[0], **params)
            return engine.stats()

    stats = run(main())
    assert stats.failed == 3 and stats.running == 0 and stats.queue_depth == 0


def test_prefix_cache_reuses_shared_prompt_blocks(llm):
    shared = PROMPTS[7][:40]
    a, b = [*shared, 11, 12, 13], [*shared, 21, 22]
    params = dict(temperature=0, max_tokens=6, ignore_eos=True)

    async def main():
        async with Engine(llm, block_size=8) as engine:
            first = await engine.generate(a, **params)
            second = await engine.generate(b, **params)
            return first, second, engine.stats()

    first, second, stats = run(main())
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == 40  # five full blocks of 8
    assert stats.prefix_hits == 1 and stats.prefix_cached_tokens == 40
    assert second.token_ids == llm.generate(b, **params).token_ids


def test_chat_and_stream_chat(llm):
    messages = [{"role": "user", "content": "hi"}]

    async def main():
        async with Engine(llm) as engine:
            completion = await engine.chat(messages, temperature=0, max_tokens=8)
            text = "".join(
                [d async for d in engine.stream_chat(messages, temperature=0, max_tokens=8)]
            )
            return completion, text

    completion, text = run(main())
    assert completion.text == text == llm.chat(messages, temperature=0, max_tokens=8).text


def test_paged_cache_matches_a_static_cache(llm):
    model = llm.model
    pool = BlockPool(n_layer=2, n_kv_head=2, head_dim=16, num_blocks=16, block_size=4)
    tokens = torch.tensor([PROMPTS[2][:11]])  # (1, 11)
    with torch.inference_mode():
        want = model(tokens)  # (1, 11, V)
        blocks = [pool.allocate() for _ in range(3)]
        first = model(
            tokens[:, :6], PagedKVCache(pool, [blocks], [0]), torch.arange(6).unsqueeze(0)
        )
        rest = model(
            tokens[:, 6:], PagedKVCache(pool, [blocks], [6]), torch.arange(6, 11).unsqueeze(0)
        )
    torch.testing.assert_close(torch.cat([first, rest], dim=1), want, atol=1e-5, rtol=0)


def test_a_view_on_the_same_blocks_shares_their_tables_and_matches_a_fresh_one(llm):
    model = llm.model
    pool = BlockPool(n_layer=2, n_kv_head=2, head_dim=16, num_blocks=16, block_size=4)
    tokens = torch.tensor([PROMPTS[2][:11], PROMPTS[3][:11]])  # (2, 11)
    with torch.inference_mode():
        want = model(tokens)[:, -1]  # (2, V)
        tables = [[pool.allocate() for _ in range(3)] for _ in range(2)]
        model(tokens[:, :9], PagedKVCache(pool, tables, [0, 0]), torch.arange(9).expand(2, 9))
        first = PagedKVCache(pool, tables, [9, 9])
        model(tokens[:, 9:10], first, torch.full((2, 1), 9))
        again = PagedKVCache.same_blocks(first, [10, 10])
        assert again.slots is first.slots and again.table is first.table
        got = model(tokens[:, 10:11], again, torch.full((2, 1), 10))[:, -1]
        assert torch.equal(again.key_positions, PagedKVCache(pool, tables, [11, 11]).key_positions)
        assert again.lengths.tolist() == [10, 10] and first.lengths.tolist() == [9, 9]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_decode_position_beyond_the_rows_blocks_is_refused():
    from llm_core import CacheFullError

    pool = BlockPool(n_layer=1, n_kv_head=1, head_dim=2, num_blocks=4, block_size=4)
    view = PagedKVCache(pool, [[pool.allocate()]], [4])  # one full block
    with pytest.raises(CacheFullError, match="beyond its row's blocks"):
        view.append(torch.tensor([[4]]))  # the decode fast path
    with pytest.raises(CacheFullError, match="beyond its row's blocks"):
        view.append(torch.tensor([[4, 5]]))  # the general one
    assert bool((pool.positions == -1).all())  # nothing written


def test_block_pool_refcounts_and_lru():
    pool = BlockPool(n_layer=1, n_kv_head=1, head_dim=2, num_blocks=4, block_size=2)
    a, b = pool.allocate(), pool.allocate()
    pool.register(a, 111)
    pool.release([a, b])
    assert pool.num_free == 3 and pool.lookup([111, 222]) == [a]
    pool.release([a])
    pool.allocate(), pool.allocate()
    assert pool.allocate() == a  # the cached block is evicted last
    assert pool.lookup([111]) == []


def test_served_engine_measures_requests_through_one_running_engine(llm):
    """The benches' engine figures are of requests through an engine started once, as
    llm-serve holds one: the same worker across measurements, a prompt of its own per request
    (no prefix-cache hits), and every request finished."""
    from llm_infer.bench import ServedEngine

    with ServedEngine(llm, max_batch=4) as served:
        worker = served.engine._thread
        one = served.measure(prompt_len=20, new_tokens=5, concurrency=1)
        four = served.measure(prompt_len=20, new_tokens=5, concurrency=4)
        assert served.engine._thread is worker and worker.is_alive()
        stats = served.engine.stats()
    assert not worker.is_alive()
    assert [one["concurrency"], four["concurrency"]] == [1, 4]
    assert stats.finished == 5 and stats.generated_tokens == 25 and stats.prefix_hits == 0
    for got in (one, four):
        assert got["wall_s"] > 0 and got["mean_time_to_first_token_s"] > 0
        assert got["aggregate_tokens_per_s"] == pytest.approx(
            got["concurrency"] * 5 / got["wall_s"]
        )
