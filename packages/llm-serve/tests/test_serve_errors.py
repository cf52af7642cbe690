"""Errors in OpenAI's shape, with their statuses: 400, 401, 404, 413, 503 (+ Retry-After); CORS."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

USER = [{"role": "user", "content": "hi"}]


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 5),
        ("top_p", 0),
        ("n", 0),
        ("max_tokens", 0),
        ("presence_penalty", 3),
        ("top_logprobs", 50),
        ("messages", []),
        ("stop", ["a", "b", "c", "d", "e"]),
    ],
)
def test_invalid_parameters_are_400(server, model, field, value):
    body = {"model": model, "messages": USER, "max_tokens": 2, field: value}
    assert_error(post(server, "/v1/chat/completions", json=body), 400, field)


def test_openai_client_sees_bad_request(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=USER, temperature=-1)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "temperature"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "tiny", "messages": USER, "logit_bias": {"x": 1}},
        {"model": "tiny", "messages": USER, "logit_bias": {"999999": 1}},
        {"model": "tiny", "messages": USER, "logit_bias": {"1": 1000}},
        {"model": "tiny", "messages": USER, "logprobs": False, "top_logprobs": 2},
        {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
        {"model": "tiny", "messages": USER, "tool_choice": "required"},
        {"model": "tiny", "prompt": []},
        {"model": "tiny", "prompt": [10**9]},
        {"model": "tiny", "prompt": ""},
        {"model": "tiny", "prompt": ["a"] * 9, "n": 2},
        {"messages": USER},
    ],
)
def test_inconsistent_requests_are_400(server, body):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    assert_error(post(server, path, json=body), 400)


def test_malformed_json_is_400(server):
    for content in (b"{", b"[1, 2]", b"null", b"\xff\xfe", b""):
        response = post(
            server,
            "/v1/chat/completions",
            content=content,
            headers={"content-type": "application/json"},
        )
        assert_error(response, 400)


def test_over_long_prompt_is_400_with_both_lengths(client, server, model):
    prompt = "word " * 1100
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt=prompt, max_tokens=4)
    error = info.value.body
    assert error["code"] == "context_length_exceeded"
    assert "1024" in error["message"] and "4 max_tokens" in error["message"]
    prompt_tokens = len(prompt.split())
    assert any(
        int(w) >= prompt_tokens for w in error["message"].replace("(", " ").split() if w.isdigit()
    )
    # without max_tokens too: the prompt alone is longer than the context
    response = post(
        server,
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
    )
    assert assert_error(response, 400, "messages")["code"] == "context_length_exceeded"


def test_max_tokens_above_the_cap_is_400(server, model):
    body = {"model": model, "messages": USER, "max_tokens": 129}
    error = assert_error(post(server, "/v1/chat/completions", json=body), 400, "max_tokens")
    assert "128" in error["message"]


def test_unknown_model_is_404(client, server):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert_error(httpx.get(f"{server.url}/v1/nothing-here"), 404)


def test_oversized_body_is_413(make_server, model):
    with make_server(max_body_bytes=2000) as small:
        big = {"model": model, "messages": [{"role": "user", "content": "x" * 5000}]}
        assert_error(post(small, "/v1/chat/completions", json=big), 413)

        def chunks():  # no Content-Length: the cap holds for a chunked upload too
            yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}]}'

        assert_error(post(small, "/v1/chat/completions", content=chunks()), 413)
        client = openai.OpenAI(base_url=f"{small.url}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=model, messages=big["messages"])
        assert info.value.status_code == 413


def test_api_key_is_required_when_set(make_server, model):
    with make_server(api_key="s3cret") as locked:
        assert httpx.get(f"{locked.url}/health").status_code == 200
        assert_error(httpx.get(f"{locked.url}/v1/models"), 401)
        wrong = httpx.get(f"{locked.url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert assert_error(wrong, 401)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{locked.url}/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{locked.url}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list().data] == [model]
        out = good.chat.completions.create(model=model, messages=USER, max_tokens=2)
        assert out.usage.completion_tokens >= 1


def test_full_queue_is_503_with_retry_after(gated, model):
    """One running, one waiting (max_batch=1, max_queue=1): the third request is refused."""
    gate_model, server = gated(max_batch=1, max_queue=1)
    with server:
        engine = server.server.config.app.state.server
        gate_model.gate.clear()  # every forward waits: the running request holds its slot
        body = {"model": model, "messages": USER, "max_tokens": 4}
        results = []
        threads = [
            threading.Thread(
                target=lambda: results.append(post(server, "/v1/chat/completions", json=body))
            )
            for _ in range(2)
        ]
        threads[0].start()
        wait_for(lambda: engine.engine.stats().running == 1)
        threads[1].start()
        wait_for(lambda: engine.engine.stats().queue_depth == 1)
        refused = post(server, "/v1/chat/completions", json=body)
        assert assert_error(refused, 503)["code"] == "server_busy"
        assert refused.headers["retry-after"] == "1"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(**body)
        assert info.value.status_code == 503
        gate_model.gate.set()
        for t in threads:
            t.join(timeout=30)
        assert [r.status_code for r in results] == [200, 200]


def test_cors_is_off_unless_an_origin_is_given(server, make_server):
    preflight = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    plain = httpx.options(f"{server.url}/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in plain.headers
    with make_server(cors_origins=("http://app.example",), api_key="k") as open_:
        allowed = httpx.options(f"{open_.url}/v1/chat/completions", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(
            f"{open_.url}/v1/chat/completions",
            headers={**preflight, "Origin": "http://evil.example"},
        )
        assert "access-control-allow-origin" not in other.headers


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_wrong_method_is_405(server):
    assert_error(httpx.get(f"{server.url}/v1/chat/completions"), 405)
