"""LLM.generate / stream / chat: HF parity, streaming, stop rules, logprobs, loading errors."""

from __future__ import annotations

import importlib

import pytest
import torch
from llm_infer import ContextLengthError, LoadError, SamplingError, load

load_module = importlib.import_module("llm_infer.load")  # the package re-exports the function


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_matches_hf_generate(family, make_hf_dir, tokenizer, hf_greedy):
    path = make_hf_dir(family, seed=1)
    llm = load(path)
    prompt = tokenizer.encode("def wrap(text, width=70):")
    want = hf_greedy(path, prompt, 64)
    got = llm.generate(prompt, temperature=0, max_tokens=64, min_tokens=64)
    assert got.token_ids == want
    assert got.finish_reason == "length"
    assert got.usage.prompt_tokens == len(prompt) and got.usage.completion_tokens == 64


def test_seed_makes_sampling_reproducible(llm):
    a = llm.generate("Hello", temperature=1.0, seed=7, max_tokens=24, ignore_eos=True)
    b = llm.generate("Hello", temperature=1.0, seed=7, max_tokens=24, ignore_eos=True)
    c = llm.generate("Hello", temperature=1.0, seed=8, max_tokens=24, ignore_eos=True)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_stream_joins_to_generate_with_multibyte_text(scripted):
    text = "naïve 日本語のテキスト 🙂 Привет"
    llm, script = scripted(text)
    deltas = list(llm.stream([5], temperature=0, max_tokens=len(script)))
    assert all(deltas)
    assert "".join(deltas) == text
    assert llm.generate([5], temperature=0, max_tokens=len(script)).text == text
    # each delta is whole characters: some tokens end mid-character and yield nothing
    assert len(deltas) < len(script)


def test_stream_of_random_model_joins_to_generate(llm, tokenizer):
    params = dict(temperature=0.9, seed=3, max_tokens=40, ignore_eos=True)
    completion = llm.generate("héllo 日本", **params)
    assert "".join(llm.stream("héllo 日本", **params)) == completion.text
    assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def test_stop_string_across_two_tokens_is_excluded(scripted, tokenizer):
    llm, script = scripted("one two three four")
    pieces = [tokenizer.decode([t]) for t in script]
    assert " three" not in pieces, "the stop string must span tokens for this test"
    completion = llm.generate([5], temperature=0, max_tokens=len(script), stop=["o thr", "xyz"])
    assert completion.text == "one tw"
    assert completion.finish_reason == "stop"
    assert "".join(llm.stream([5], temperature=0, max_tokens=20, stop="o thr")) == "one tw"


def test_stop_string_prefix_that_does_not_match_is_released(scripted):
    llm, script = scripted("one two")
    completion = llm.generate([5], temperature=0, max_tokens=len(script), stop="two!")
    assert completion.text == "one two"
    assert completion.finish_reason == "length"


def test_stop_token_ids_and_eos(scripted, tokenizer):
    llm, script = scripted("ab cd<|im_end|>ef")
    completion = llm.generate([5], temperature=0, max_tokens=len(script))
    assert completion.text == "ab cd" and completion.finish_reason == "stop"
    assert completion.token_ids[-1] == tokenizer.eos_token_ids[0]
    ignored = llm.generate([5], temperature=0, max_tokens=len(script), ignore_eos=True)
    assert ignored.text == "ab cdef"
    first = script[0]
    stopped = llm.generate([5], temperature=0, max_tokens=5, stop_token_ids=[first])
    assert stopped.token_ids == [first] and stopped.text == ""


def test_min_tokens_bans_stop_tokens(scripted, tokenizer):
    llm, _ = scripted("<|im_end|>ab")
    completion = llm.generate([5], temperature=0, max_tokens=3, min_tokens=2)
    assert tokenizer.eos_token_ids[0] not in completion.token_ids[:2]


def test_logprobs_with_top_n(llm):
    completion = llm.generate("Hi", temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
    assert len(completion.logprobs) == 4
    for token_id, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        assert entry.token_id == token_id
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(max(entry.top_logprobs.values()))  # greedy: the top
        assert entry.logprob <= 0


def test_chat_uses_the_template(llm, tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    completion = llm.chat(messages, temperature=0, max_tokens=8)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert completion.token_ids == llm.generate(prompt, temperature=0, max_tokens=8).token_ids
    assert "".join(llm.stream_chat(messages, temperature=0, max_tokens=8)) == completion.text


def test_context_length_error_names_limit_and_length(llm):
    with pytest.raises(ContextLengthError, match=r"limit is 256 tokens, this request needs 302"):
        llm.generate([1] * 2, max_tokens=300)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": -1}, "temperature must be"),
        ({"top_p": 0}, "top_p must be in"),
        ({"top_k": -2}, "top_k must be"),
        ({"min_p": 2}, "min_p must be"),
        ({"max_tokens": 0}, "max_tokens must be"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens must be"),
        ({"presence_penalty": 3}, "presence_penalty must be"),
        ({"repetition_penalty": 0}, "repetition_penalty must be"),
        ({"logit_bias": {10**6: 1.0}}, "outside the vocabulary"),
        ({"top_logprobs": 2}, "needs logprobs=True"),
        ({"stop": [""]}, "stop must be"),
        ({"temprature": 1}, "unknown sampling parameter 'temprature'"),
    ],
)
def test_bad_parameters_raise_clear_errors(llm, params, message):
    with pytest.raises(SamplingError, match=message):
        llm.generate("x", **params)


def test_bad_prompts(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate("")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([10**6])


def test_load_errors_name_what_is_missing(tmp_path, llama_dir, monkeypatch):
    monkeypatch.setattr(load_module, "DEMO_DIR", tmp_path / "no-demo")
    with pytest.raises(LoadError, match="demo model is not built yet"):
        load("demo")
    monkeypatch.undo()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(LoadError, match="not a GGUF file .4 bytes"):
        load(gguf)
    with pytest.raises(LoadError, match="no such GGUF file"):
        load(tmp_path / "missing.gguf")
    with pytest.raises(LoadError, match="no such model directory"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="no tokenizer.json"):
        load(tmp_path / "empty")
    with pytest.raises(LoadError, match="unknown dtype"):
        load(llama_dir, dtype="fp8")


def test_load_reads_chat_template_and_dtype(llama_dir):
    llm = load(llama_dir, dtype="bf16")
    assert llm.model.dtype == torch.bfloat16
    assert "<|im_start|>" in llm.chat_prompt([{"role": "user", "content": "x"}])
    assert llm.tokenizer.eos_token_ids
    assert llm.generate("x", temperature=0, max_tokens=3).usage.completion_tokens <= 3


def test_load_demo_when_bundled():
    if not (load_module.DEMO_DIR / "config.json").is_file():
        pytest.skip("the demo model is not built")
    llm = load("demo")
    reply = llm.chat(
        [{"role": "user", "content": "What does json.dumps do?"}], temperature=0, max_tokens=8
    )
    assert reply.usage.completion_tokens >= 1
