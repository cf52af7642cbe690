"""The public API: special-token policies, normalization, batches, errors, no torch on import."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import pytest
from llm_tokenizer import DisallowedSpecialTokenError, Tokenizer, TokenizerError, bytes_to_unicode


@pytest.fixture(scope="module")
def tokenizer(corpus, special_tokens) -> Tokenizer:
    return Tokenizer.train(
        [corpus["train"][:200_000]], 800, special_tokens=special_tokens, eos_token="<|endoftext|>"
    )


def test_import_does_not_import_torch():
    code = "import sys, llm_tokenizer; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_special_tokens_allowed_disallowed_or_text(tokenizer):
    eot = tokenizer.special_tokens["<|endoftext|>"]
    text = "a<|endoftext|>b"
    assert eot in tokenizer.encode(text)
    as_text = tokenizer.encode(text, allowed_special=())
    assert eot not in as_text and tokenizer.decode(as_text) == text
    with pytest.raises(DisallowedSpecialTokenError, match="endoftext"):
        tokenizer.encode(text, allowed_special=(), disallowed_special="all")
    assert (
        tokenizer.encode(text, allowed_special={"<|im_start|>"}, disallowed_special={"<|im_end|>"})
        == as_text
    )
    assert tokenizer.encode_ordinary(text) == as_text
    with pytest.raises(TokenizerError, match="unknown special"):
        tokenizer.encode(text, allowed_special={"<|nope|>"})


def test_longest_special_token_wins():
    tokenizer = Tokenizer.train(["abc"], 259, special_tokens=["<a>", "<a><b>", "<b>"])
    assert tokenizer.encode("<a><b><b>") == [257, 258]


def test_nfc_normalization():
    tokenizer = Tokenizer.train(["café " * 50], 300, normalization="NFC")
    decomposed = unicodedata.normalize("NFD", "café")
    assert tokenizer.encode(decomposed) == tokenizer.encode("café")
    assert tokenizer.decode(tokenizer.encode(decomposed)) == "café"


def test_encode_batch_and_bos(tokenizer):
    texts = ["hello world", "", "def f(x):\n    return x"]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    with pytest.raises(TokenizerError, match="no bos"):
        tokenizer.encode("x", add_bos=True)


def test_decode_with_replacement_and_bad_ids(tokenizer):
    first_byte_of_e_acute = tokenizer.token_id(bytes_to_unicode()[0xC3])
    assert tokenizer.decode([first_byte_of_e_acute]) == "\ufffd"
    assert (
        tokenizer.decode([first_byte_of_e_acute, tokenizer.token_id(bytes_to_unicode()[0xA9])])
        == "é"
    )
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.decode([-1])


def test_protocol_surface(tokenizer):
    """What llm-infer's Tokenizer protocol asks for."""
    assert tokenizer.eos_token_ids == (tokenizer.special_tokens["<|endoftext|>"],)
    assert tokenizer.vocab_size == 800
    assert tokenizer.decode(tokenizer.encode("x = 1")) == "x = 1"
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
        == "<|im_start|>user\nhi<|im_end|>\n"
    )


def test_hf_directory_with_configs(hf_byte_level, tmp_path):
    hf_byte_level.save(str(tmp_path / "tokenizer.json"))
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    config = {
        "bos_token": {"content": "<|im_start|>"},
        "eos_token": "<|im_end|>",
        "chat_template": template,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    vocab = hf_byte_level.get_vocab()
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [vocab["<|im_end|>"], vocab["<|endoftext|>"]]})
    )
    tokenizer = Tokenizer.from_file(tmp_path)
    assert tokenizer.eos_token_ids == (vocab["<|im_end|>"], vocab["<|endoftext|>"])
    assert tokenizer.bos_token_id == vocab["<|im_start|>"]
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
        == "<|im_start|>hi<|im_end|>"
    )
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }}")
    reloaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert reloaded.apply_chat_template([{"role": "user", "content": "hi"}]) == "1"


def test_gguf_errors_name_the_problem():
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
        Tokenizer.from_gguf({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="lacks tokenizer.ggml.tokens"):
        Tokenizer.from_gguf({"tokenizer.ggml.model": "gpt2"})


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tokenizer.from_file(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(TokenizerError, match="neither"):
        Tokenizer.from_file(tmp_path / "other.json")
    with pytest.raises(TokenizerError, match="without a tokenizer.json"):
        Tokenizer.from_file(tmp_path)


def test_custom_pattern_with_groups_and_gaps_loses_no_byte():
    """Whole matches count even when the regex has groups; text between matches is kept."""
    tokenizer = Tokenizer.train(["hello world hello"], 262, pattern=r"(\w+)| ", min_frequency=1)
    text = "hi, hello!\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.token_id("hello") in tokenizer.encode(text)
    with pytest.raises(TokenizerError, match="neither a name"):
        Tokenizer.train(["x"], 256, pattern="(unclosed")
