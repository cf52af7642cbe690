"""/v1/embeddings (mean-pooled hidden states), /tokenize, /detokenize, /health, /metrics."""

from __future__ import annotations

import httpx
import pytest
import torch


def test_embeddings_are_mean_pooled_hidden_states(client, model, llm):
    texts = ["def wrap(text):", "a"]
    with torch.inference_mode():
        want = [
            llm.model.hidden_states(torch.tensor([llm.tokenizer.encode(t)]))[0].mean(0)
            for t in texts
        ]
    # left unset, the openai client asks for base64 (float32) and decodes it
    for options in ({"encoding_format": "float"}, {}):
        out = client.embeddings.create(model=model, input=texts, **options)
        assert [d.index for d in out.data] == [0, 1]
        for got, ref in zip(out.data, want, strict=True):
            assert len(got.embedding) == 64
            torch.testing.assert_close(torch.tensor(got.embedding), ref, atol=1e-5, rtol=1e-5)
    assert out.usage.prompt_tokens == sum(len(llm.tokenizer.encode(t)) for t in texts)
    by_ids = client.embeddings.create(
        model=model, input=llm.tokenizer.encode("a"), encoding_format="float"
    )
    assert by_ids.data[0].embedding == pytest.approx(want[1].tolist(), abs=1e-5)


def test_embedding_errors(server, model):
    url = f"{server.url}/v1/embeddings"
    long = httpx.post(url, json={"model": model, "input": "word " * 1100})
    assert long.status_code == 400 and "1024" in long.json()["error"]["message"]
    assert httpx.post(url, json={"model": model, "input": []}).status_code == 400
    assert httpx.post(url, json={"model": model, "input": "x", "dimensions": 3}).status_code == 400


def test_tokenize_round_trip(server, model, llm):
    text = "héllo wörld 🙂"
    tokens = httpx.post(f"{server.url}/tokenize", json={"model": model, "prompt": text}).json()
    assert tokens["tokens"] == llm.tokenizer.encode(text)
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 1024
    back = httpx.post(f"{server.url}/detokenize", json={"model": model, "tokens": tokens["tokens"]})
    assert back.json() == {"prompt": text}
    chat = httpx.post(
        f"{server.url}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}
    ).json()
    prompt = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert chat["tokens"] == llm.tokenizer.encode(prompt)
    bad = httpx.post(f"{server.url}/detokenize", json={"tokens": [-1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(f"{server.url}/tokenize", json={}).status_code == 400


def test_health_and_metrics(server, client, model):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    for _ in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
    ):
        pass
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert metrics['llm_requests_total{route="/v1/chat/completions",status="200"}'] >= 1
    assert metrics["llm_generation_tokens_total"] >= 1
    assert metrics["llm_time_to_first_token_seconds_count"] >= 1
    assert metrics["llm_time_per_output_token_seconds_count"] >= 1
    assert sum(v for k, v in metrics.items() if k.startswith("llm_request_finished_total{")) >= 1
    for name in (
        "llm_queue_depth",
        "llm_prompt_tokens_total",
        "llm_prefix_cache_hits_total",
        "llm_running_requests",
        "llm_engine_failed_total",
    ):
        assert name in metrics
