"""A client that leaves mid-stream cancels its generation within a decode step; the slot is freed."""

from __future__ import annotations

import contextlib
import json
import time

import httpx

USER = [{"role": "user", "content": "Tell me a long story."}]


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_disconnect_frees_the_slot_and_the_next_request_is_served(gated, model, ids):
    # 30 ms a step: the disconnect reaches the server well within one step
    _, server = gated(delay=0.03, max_batch=1, max_queue=4)
    body = {
        "model": model,
        "messages": USER,
        "max_tokens": 200,
        "stream": True,
        "logit_bias": {str(ids["eos"]): -100},
    }
    with server:
        engine = server.server.config.app.state.server.engine
        with httpx.Client(base_url=server.url, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                deltas = 0
                for line in response.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0][
                        "delta"
                    ].get("content"):
                        deltas += 1
                    if deltas == 3:
                        break
                steps_at_disconnect = engine.stats().steps
            # leaving the block closed the connection mid-stream
            wait_for(lambda: engine.stats().running == 0)
            stats = engine.stats()
            assert stats.cancelled == 1 and stats.finished == 0
            assert stats.steps - steps_at_disconnect <= 2  # the step in flight, then out
            assert stats.generated_tokens < 20
            assert stats.blocks_in_use == 0

            # the freed slot serves the next request (max_batch=1)
            started = time.monotonic()
            nxt = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3})
            assert nxt.status_code == 200
            assert nxt.json()["usage"]["completion_tokens"] == 3
            assert time.monotonic() - started < 5
            assert engine.stats().finished == 1


def test_disconnect_cancels_an_unstreamed_request(gated, model, ids):
    _, server = gated(delay=0.03, max_batch=1)
    body = {
        "model": model,
        "messages": USER,
        "max_tokens": 200,
        "logit_bias": {str(ids["eos"]): -100},
    }
    with server:
        engine = server.server.config.app.state.server.engine
        with contextlib.suppress(httpx.TimeoutException):  # the client gives up and leaves
            httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.3)
        wait_for(lambda: engine.stats().running == 0)
        assert engine.stats().cancelled == 1
        assert engine.stats().generated_tokens < 100
