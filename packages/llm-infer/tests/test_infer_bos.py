"""BOS end to end: a raw-text prompt on a checkpoint whose tokenizer adds BOS reaches the model
as HF `tokenizer(prompt).input_ids`; a chat template that writes the BOS gets no second one."""

from __future__ import annotations

import json

import pytest
from llm_infer import load

BOS = "<|endoftext|>"


@pytest.fixture
def bos_llama_dir(make_hf_dir, tokenizer):
    """An HF Llama checkpoint whose tokenizer adds BOS: `add_bos_token` in tokenizer_config.json
    and a TemplateProcessing post-processor ("<bos> $A"), as Llama checkpoints ship them."""
    path = make_hf_dir("llama", seed=2)
    data = json.loads((path / "tokenizer.json").read_text())
    bos_id = tokenizer.token_id(BOS)
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}},
    }  # fmt: skip
    (path / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(bos_token=BOS, add_bos_token=True)
    config["chat_template"] = "{{ bos_token }}" + config["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("prompt", ["def main():\n    return 1", "héllo wörld", " x"])
def test_text_prompt_ids_equal_hf_tokenizer(bos_llama_dir, prompt):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(bos_llama_dir)
    expected = hf(prompt).input_ids
    assert expected[0] == hf.bos_token_id
    llm = load(bos_llama_dir)
    assert llm.tokenizer.add_bos_token
    assert llm.encode_prompt(prompt) == expected
    assert llm.encode_prompt([5, 6]) == [5, 6]  # ids are sent as given


def test_completion_sends_hf_ids_to_the_model(bos_llama_dir, hf_greedy):
    from transformers import AutoTokenizer

    prompt = "def main():"
    ids = AutoTokenizer.from_pretrained(bos_llama_dir)(prompt).input_ids
    llm = load(bos_llama_dir)
    result = llm.generate(prompt, temperature=0, max_tokens=6, min_tokens=6)
    assert result.usage.prompt_tokens == len(ids)
    assert result.token_ids == hf_greedy(bos_llama_dir, ids, 6)


def test_chat_template_that_writes_bos_gets_no_second(bos_llama_dir):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "hi"}]
    hf = AutoTokenizer.from_pretrained(bos_llama_dir)
    expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected  # BatchEncoding
    llm = load(bos_llama_dir)
    ids = llm.encode_prompt(llm.chat_prompt(messages))
    assert ids == list(expected)
    assert ids.count(llm.tokenizer.bos_token_id) == 1
