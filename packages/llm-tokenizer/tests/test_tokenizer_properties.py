"""Property tests: lossless round trips, streaming equals one-shot decoding, cache changes nothing."""

from __future__ import annotations

import itertools

import pytest
import regex
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from llm_tokenizer import PATTERNS, Tokenizer

settings.register_profile("llm-tokenizer", max_examples=200, deadline=None)
settings.load_profile("llm-tokenizer")


@pytest.fixture(scope="module")
def byte_level(corpus, special_tokens) -> Tokenizer:
    return Tokenizer.train(
        [corpus["train"][:300_000], corpus["held_out"][:100_000]],
        1200,
        special_tokens=special_tokens,
    )


@pytest.fixture(scope="module")
def sentencepiece(hf_metaspace, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("metaspace") / "tokenizer.json"
    hf_metaspace.save(str(path))
    return Tokenizer.from_file(path)


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200) | st.sampled_from(
    [
        "",
        " ",
        "  \n\t ",
        "<|endoftext|>",
        "a<|im_start|>b",
        "👨‍👩‍👧‍👦x",
        "你好 世界",
        "\r\n\r\n",
        "e\u0301",
    ]
)


@given(text=texts)
def test_byte_level_round_trip(byte_level, text):
    assert byte_level.decode(byte_level.encode(text)) == text
    assert byte_level.decode(byte_level.encode(text, allowed_special=())) == text


@given(text=texts)
def test_sentencepiece_round_trip(sentencepiece, text):
    """Lossless except where HF is lossy too: a leading space, a literal "▁", text after special tokens."""
    assume(
        not text.startswith(" ")
        and "▁" not in text
        and not any(t in text for t in sentencepiece.special_tokens)
    )
    assert sentencepiece.decode(sentencepiece.encode(text)) == text


@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_streaming_pieces_join_to_decode(byte_level, sentencepiece, text, cuts):
    for tokenizer in (byte_level, sentencepiece):
        ids = tokenizer.encode(text)
        stream = tokenizer.decode_stream()
        bounds = [0, *sorted(c % (len(ids) + 1) for c in cuts), len(ids)]
        pieces = [stream.add(ids[a:b]) for a, b in itertools.pairwise(bounds)]
        pieces.append(stream.finish())
        assert "".join(pieces) == tokenizer.decode(ids)
        assert all("\ufffd" not in p for p in pieces[:-1]) or "\ufffd" in text


@given(ids=st.lists(st.integers(0, 1199), max_size=60), cut=st.integers(0, 60))
def test_streaming_arbitrary_ids_matches_decode_with_replacement(byte_level, ids, cut):
    stream = byte_level.decode_stream()
    text = stream.add(ids[:cut]) + stream.add(ids[cut:]) + stream.finish()
    assert text == byte_level.decode(ids)


@given(text=texts)
def test_cache_does_not_change_encoding(byte_level, sentencepiece, text):
    for tokenizer in (byte_level, sentencepiece):
        tokenizer.cache_size = 0
        uncached = tokenizer.encode(text)
        tokenizer.cache_size = 4  # tiny: cleared again and again
        tiny = [tokenizer.encode(text), tokenizer.encode(text)]
        tokenizer.cache_size = 1 << 18
        assert uncached == tiny[0] == tiny[1] == tokenizer.encode(text) == tokenizer.encode(text)


@pytest.fixture(scope="module")
def hf_pairs(hf_byte_level, hf_metaspace, hf_split_pattern):
    """(HF tokenizer, ours loaded from its tokenizer.json) for each HF pipeline we read."""
    return [
        (hf, Tokenizer.from_hf_json(hf.to_str()))
        for hf in (hf_byte_level, hf_metaspace, hf_split_pattern)
    ]


@given(
    text=texts
    | st.text(
        st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u200b\u3000\ufeffa1'_"),
        max_size=30,
    )
)
def test_arbitrary_text_matches_hf(hf_pairs, text):
    for hf, ours in hf_pairs:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


@given(text=texts)
def test_gpt4_and_llama3_patterns_split_alike(text):
    assert regex.findall(PATTERNS["gpt4"], text) == regex.findall(PATTERNS["llama3"], text)
