"""Pre-tokenizers against HF tokenizers: Split behaviours, Digits, Punctuation, Whitespace,
Sequence, Unicode normalizers, and llama.cpp's named pre-tokenizers on vocabularies these tests
build (the fast subset of test_tokenizer_vocabularies, which needs the llama.cpp sdist)."""

from __future__ import annotations

import json

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_tokenizer import Split, Tokenizer, TokenizerError
from llm_tokenizer.gguf import (
    CONTROL,
    LLAMA_CPP_IGNORE_MERGES,
    LLAMA_CPP_PRE_TOKENIZERS,
    NORMAL,
)
from llm_tokenizer.pretokenizers import BEHAVIORS, FASTER_EQUIVALENTS
from tokenizers import Regex, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

SAMPLES = [
    "",
    "Hello, world! It's 2024-06-01; x=1_000_000.",
    "  leading and trailing  ",
    "東京タワー 서울 🇫🇷 naïve café ½ १२३ ٣",
    "a\n\n\tb\r\n  c\u00a0d\u3000e",
    "((nested)) [brackets] {braces} <tags>",
]
# Unassigned code points left out: Python's and Rust's Unicode versions may disagree on them.
texts = st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=80) | st.sampled_from(
    SAMPLES
)
# HF's Punctuation step asks the `unicode_categories` crate, whose table predates characters that
# later Unicode versions assigned outside the BMP (U+11660 MONGOLIAN BIRGA WITH ORNAMENT is
# punctuation to `regex`'s `\p{P}`, not to HF): a known divergence, so these texts stay in the BMP.
bmp_texts = st.text(
    st.characters(blacklist_categories=("Cs", "Cn"), max_codepoint=0xFFFF), max_size=80
) | st.sampled_from(SAMPLES)
HF_BEHAVIOR = {
    "isolated": "isolated",
    "removed": "removed",
    "merged_with_previous": "merged_with_previous",
    "merged_with_next": "merged_with_next",
    "contiguous": "contiguous",
}


def hf_pieces(pre, text: str) -> list[str]:
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


@settings(max_examples=60, deadline=None)
@given(text=texts)
@pytest.mark.parametrize("behavior", BEHAVIORS)
@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("pattern", [r"\d+", r"\s", r"[,.;!]"])
def test_split_behaviours_match_hf(pattern, behavior, invert, text):
    hf = pre_tokenizers.Split(Regex(pattern), behavior=HF_BEHAVIOR[behavior], invert=invert)
    assert Split(pattern, behavior, invert).split(text) == hf_pieces(hf, text)


@settings(max_examples=60, deadline=None)
@given(text=bmp_texts)
def test_digits_punctuation_whitespace_match_hf(text):
    """The HF steps, read from their tokenizer.json form, cut text as HF cuts it."""
    from llm_tokenizer.formats import _hf_split

    for hf in (
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Punctuation(),
        pre_tokenizers.Punctuation(behavior="merged_with_previous"),
        pre_tokenizers.Whitespace(),
        pre_tokenizers.WhitespaceSplit(),
    ):
        step = _hf_split(json.loads(hf.__getstate__()))
        assert step.split(text) == hf_pieces(hf, text), hf.__getstate__()


def with_pre_tokenizer(hf: HFTokenizer, pre, normalizer=None, ignore_merges=False) -> HFTokenizer:
    data = json.loads(hf.to_str())
    data["pre_tokenizer"] = json.loads(pre.__getstate__())
    data["normalizer"] = json.loads(normalizer.__getstate__()) if normalizer else None
    data["model"]["ignore_merges"] = ignore_merges
    return HFTokenizer.from_str(json.dumps(data))


@pytest.mark.parametrize(
    ("pre", "normalizer"),
    [
        # SmolLM2's real tokenizer.json: every digit alone, then GPT-2's byte-level regex.
        (
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False),
                ]
            ),
            None,
        ),
        (
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Punctuation(behavior="isolated"),
                    pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False),
                ]
            ),
            normalizers.NFKC(),
        ),
        (
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(r" ?\p{L}+"), behavior="merged_with_next"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            ),
            normalizers.NFD(),
        ),
    ],
    ids=["smollm2-digits", "punctuation-nfkc", "merged-nfd"],
)
def test_hf_sequences_and_normalizers_match_hf(hf_split_pattern, corpus, pre, normalizer):
    hf = with_pre_tokenizer(hf_split_pattern, pre, normalizer)
    ours = Tokenizer.from_hf_json(hf.to_str())
    text = corpus["held_out"][:150_000]
    expected = hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text) == expected
    assert ours.decode(expected) == hf.decode(expected, skip_special_tokens=False)


def oniguruma(pattern: str) -> str:
    r"""Our regex in HF's engine's (Oniguruma's) spelling: `\Z` (end of the piece) is `\z`, and
    code points are written `\x{...}`."""
    pattern = pattern.replace(r"\Z", r"\z")
    code_point = r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})"
    return regex.sub(code_point, lambda m: "\\x{" + (m[1] or m[2]) + "}", pattern)


# Named pre-tokenizers, each against HF running the same regexes.
NAMED = [
    "smollm", "default", "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon", "qwen35",
    "bloom", "viking", "tekken", "gpt-4o", "chameleon", "tiny_aya", "bailingmoe", "llama-bpe",
    "exaone-moe", "seed-coder", "jais-2", "minicpm5", "youtu", "laguna",
]  # fmt: skip


@pytest.mark.parametrize("pre", NAMED)
def test_named_pre_tokenizers_split_as_hf_sequences(pre, hf_split_pattern, corpus, special_tokens):
    """A GGUF vocabulary with `tokenizer.ggml.pre` = name encodes as HF with the same regexes as
    a Sequence of isolated Splits (what llama.cpp's regex lists mean), then ByteLevel."""
    regexes = LLAMA_CPP_PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Split(Regex(oniguruma(r)), behavior="isolated") for r in regexes]
    hf = with_pre_tokenizer(
        hf_split_pattern,
        pre_tokenizers.Sequence(
            [*steps, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        ),
        ignore_merges=pre in LLAMA_CPP_IGNORE_MERGES,
    )
    vocab = hf.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [CONTROL if t in special_tokens else NORMAL for t in tokens],
        "tokenizer.ggml.merges": [" ".join(m) for m in json.loads(hf.to_str())["model"]["merges"]],
    }
    ours = Tokenizer.from_gguf(metadata)
    text = corpus["held_out"][:60_000]
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_unknown_pre_tokenizer_and_model_types_name_the_supported_list():
    base = {"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []}
    with pytest.raises(TokenizerError, match=r"unsupported GGUF pre-tokenizer 'nope'.*smollm"):
        Tokenizer.from_gguf({**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nope"})
    with pytest.raises(TokenizerError, match=r"'kimi-k2' \(llama.cpp splits it with hand-written"):
        Tokenizer.from_gguf(
            {**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "kimi-k2"}
        )
    with pytest.raises(TokenizerError, match=r"'bert' \(WordPiece\).*'gpt2'.*'llama'"):
        Tokenizer.from_gguf({**base, "tokenizer.ggml.model": "bert"})
    for model in ("WordPiece", "Unigram"):
        with pytest.raises(TokenizerError, match=f"unsupported HF model type '{model}'.*BPE"):
            Tokenizer.from_hf_json(json.dumps({"model": {"type": model, "vocab": {}}}))
    with pytest.raises(TokenizerError, match="unsupported HF pre_tokenizer step"):
        Tokenizer.from_hf_json(
            json.dumps(
                {
                    "model": {"type": "BPE", "vocab": {}, "merges": []},
                    "pre_tokenizer": {
                        "type": "Sequence",
                        "pretokenizers": [{"type": "UnicodeScripts"}, {"type": "ByteLevel"}],
                    },
                }
            )
        )


def test_split_sequences_save_and_load(hf_split_pattern, corpus, tmp_path):
    """Our JSON keeps the steps; the HF file we write encodes in HF tokenizers as we do."""
    hf = with_pre_tokenizer(
        hf_split_pattern,
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Punctuation(behavior="merged_with_next"),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        ),
        normalizers.NFKC(),
    )
    ours = Tokenizer.from_hf_json(hf.to_str())
    assert isinstance(ours.pattern, tuple) and len(ours.pattern) == 3
    ours.save(tmp_path / "ours.json")
    again = Tokenizer.from_file(tmp_path / "ours.json")
    assert again.pattern == ours.pattern and again.normalization == "NFKC"
    ours.save(tmp_path / "tokenizer.json", format="hf")
    written = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = corpus["held_out"][:50_000]
    expected = hf.encode(text, add_special_tokens=False).ids
    assert again.encode(text) == expected
    assert written.encode(text, add_special_tokens=False).ids == expected


LETTER = regex.compile(r"\p{L}")


def test_a_faster_equivalent_has_only_letters_in_its_class():
    for original in FASTER_EQUIVALENTS:
        assert original.startswith(r"\s?[") and original.endswith("]+")
        letters = regex.compile(original[len(r"\s?") : -1])  # the class
        members = [
            chr(c)
            for c in range(0x110000)
            if not 0xD800 <= c < 0xE000 and letters.fullmatch(chr(c))
        ]
        assert len(members) > 1000 and all(LETTER.fullmatch(m) for m in members)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=60))
def test_a_faster_equivalent_matches_what_its_pattern_matches(text):
    mixed = text + " naïve Ελληνικά Кириллица ǅemal ʔa ſ µ 東京 ꙮ 𐐀𐐨 x1 Ŋ\t"
    for original, faster in FASTER_EQUIVALENTS.items():
        assert regex.findall(faster, mixed) == regex.findall(original, mixed)
        assert Split(original).split(mixed) == [
            piece for piece in regex.split(f"({original})", mixed) if piece
        ]
