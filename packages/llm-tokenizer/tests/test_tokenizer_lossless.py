"""Never a silently lost character: byte fallback wherever the byte tokens live, and a visible
warning (or, under strict=True, an error) where the vocabulary truly cannot spell a byte."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_tokenizer import Tokenizer, TokenizerError, TokenizerWarning
from tokenizers import Tokenizer as HFTokenizer


def test_byte_level_vocabulary_missing_bytes_drops_as_hf_and_warns_once(hf_byte_level):
    """A byte-level vocabulary without some byte tokens (as SmolLM2's lacks 21): HF drops the
    byte; we drop it too, warn once naming the missing bytes, and raise under strict=True."""
    data = json.loads(hf_byte_level.to_str())
    vocab = data["model"]["vocab"]
    removed = {"Ą": 0x04, "Ć": 0x06}  # GPT-2's unicode spelling of bytes 0x04 and 0x06
    merged = {part for merge in data["model"]["merges"] for part in merge}
    assert not merged & removed.keys()  # no merge uses them, so the vocabulary stays valid
    for token in removed:
        del vocab[token]
    hf = HFTokenizer.from_str(json.dumps(data))
    ours = Tokenizer.from_hf_json(json.dumps(data))
    assert ours.missing_bytes == b"\x04\x06"
    text = "print('a\x04b')  # \x06 done\x04"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ours.encode(text)
        assert ours.encode(text) == got
    assert got == hf.encode(text, add_special_tokens=False).ids
    messages = [str(w.message) for w in caught if issubclass(w.category, TokenizerWarning)]
    assert len(messages) == 1 and "0x04" in messages[0] and "0x06" in messages[0]
    with pytest.raises(TokenizerError, match=r"no token for byte\(s\) 0x04"):
        ours.encode(text, strict=True)
    assert (
        ours.encode("no control bytes here", strict=True)
        == hf.encode("no control bytes here", add_special_tokens=False).ids
    )


BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


@pytest.fixture(scope="module")
def hf_added_byte_tokens(corpus) -> HFTokenizer:
    """The issue's layout: Metaspace(prepend_scheme="first") + BPE(byte_fallback=True), the
    `<0xNN>` byte tokens registered as added (special) tokens by the trainer."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    hf.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<unk>", "<s>", "</s>", *BYTE_TOKENS],
        min_frequency=2,
        show_progress=False,
    )
    hf.train_from_iterator([corpus["train"][:200_000]], trainer)
    return hf


def test_byte_fallback_finds_byte_tokens_registered_as_added_tokens(hf_added_byte_tokens):
    """The issue's repro: "naïve café 東京" lost its non-ASCII letters ("nave caf ")."""
    hf = hf_added_byte_tokens
    ours = Tokenizer.from_hf_json(hf.to_str())
    text = "naïve café 東京"
    expected = hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text, strict=True) == expected
    assert "<0xC3>" in [ours.tokens[i] for i in expected]
    for skip in (False, True):  # HF skips the (special) byte tokens under skip_special_tokens
        assert ours.decode(expected, skip_special_tokens=skip) == hf.decode(
            expected, skip_special_tokens=skip
        )
    assert ours.decode(expected) == text


def test_sentencepiece_without_bytes_or_unk_warns_and_strict_raises(hf_added_byte_tokens):
    """No byte tokens and no unk token: HF drops the character; so do we, visibly."""
    data = json.loads(hf_added_byte_tokens.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in BYTE_TOKENS]
    data["model"]["vocab"] = {
        t: i for t, i in data["model"]["vocab"].items() if t not in BYTE_TOKENS
    }
    data["model"]["unk_token"] = None
    hf = HFTokenizer.from_str(json.dumps(data))
    ours = Tokenizer.from_hf_json(json.dumps(data))
    text = "naïve 東"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert [w for w in caught if issubclass(w.category, TokenizerWarning)]
    with pytest.raises(TokenizerError, match="no token"):
        ours.encode(text, strict=True)


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120) | st.sampled_from(
    ["naïve café 東京", "\x00\x7f\x80", "<s>x</s>", "👨‍👩‍👧‍👦 \t\n", "▁▁a", "ǅ\u0301"]
)


@pytest.fixture(scope="module")
def added_byte_tokens(hf_added_byte_tokens) -> Tokenizer:
    return Tokenizer.from_hf_json(hf_added_byte_tokens.to_str())


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_round_trip_with_added_byte_tokens(hf_added_byte_tokens, added_byte_tokens, text):
    """Over a vocabulary that covers all 256 bytes, decode(encode(text)) == text, modulo the
    documented SentencePiece normalization: "▁" in the text stands for a space, and decoding
    drops the one leading space that encoding adds (a text that begins with a space loses
    it, as in HF)."""
    ids = added_byte_tokens.encode(text, strict=True)
    assert ids == hf_added_byte_tokens.encode(text, add_special_tokens=False).ids
    normalized = text.replace("▁", " ")
    expected = normalized[1:] if normalized.startswith(" ") else normalized
    assert added_byte_tokens.decode(ids) == expected
