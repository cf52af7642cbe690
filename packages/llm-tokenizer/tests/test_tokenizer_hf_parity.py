"""Our encodings of >1 MB of held-out text agree with HF tokenizers id for id, and decode alike."""

from __future__ import annotations

import json

import pytest
from llm_tokenizer import Tokenizer
from llm_tokenizer.gguf import BYTE, CONTROL, NORMAL, UNKNOWN
from llm_tokenizer.patterns import LLAMA3_PATTERN
from tokenizers import AddedToken, models, processors
from tokenizers import Tokenizer as HFTokenizer
from transformers.convert_slow_tokenizer import generate_merges


def first_mismatch(ours: list[int], theirs: list[int], tokenizer: Tokenizer) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    window = slice(max(at - 3, 0), at + 3)
    return (
        f"first difference at token {at} of {len(ours)}/{len(theirs)}: "
        f"ours {[tokenizer.tokens[i] for i in ours[window]]} vs HF {[tokenizer.tokens[i] for i in theirs[window]]}"
    )


def assert_same_as_hf(ours: Tokenizer, hf: HFTokenizer, text: str) -> None:
    expected = hf.encode(text, add_special_tokens=False).ids
    got = ours.encode(text)
    assert got == expected, first_mismatch(got, expected, ours)
    assert ours.decode(got) == hf.decode(expected, skip_special_tokens=False)
    assert ours.decode(got, skip_special_tokens=True) == hf.decode(
        expected, skip_special_tokens=True
    )


def save_hf(hf: HFTokenizer, tmp_path, name: str = "tokenizer.json"):
    path = tmp_path / name
    hf.save(str(path))
    return path


def test_byte_level_matches_hf(hf_byte_level, corpus, special_tokens, tmp_path):
    text = corpus["held_out"]
    assert len(text.encode()) >= 1_000_000
    assert all(s in text for s in special_tokens) and "\u3000" in text and "👨‍👩‍👧‍👦" in text
    ours = Tokenizer.from_file(save_hf(hf_byte_level, tmp_path))
    assert ours.vocab_size == hf_byte_level.get_vocab_size()
    assert_same_as_hf(ours, hf_byte_level, text)
    assert ours.decode(ours.encode(text)) == text


def test_split_pattern_byte_level_matches_hf(hf_split_pattern, corpus, tmp_path):
    """A Llama 3-style tokenizer.json: Split(regex) then ByteLevel without its own regex."""
    hf = hf_split_pattern
    ours = Tokenizer.from_file(save_hf(hf, tmp_path))
    assert ours.pattern == LLAMA3_PATTERN
    assert_same_as_hf(ours, hf, corpus["held_out"][:300_000])


def test_metaspace_byte_fallback_matches_hf(hf_metaspace, corpus, tmp_path):
    ours = Tokenizer.from_file(save_hf(hf_metaspace, tmp_path))
    assert ours.kind == "sentencepiece" and ours.byte_fallback
    assert_same_as_hf(ours, hf_metaspace, corpus["held_out"])


def test_llama2_legacy_normalizer_matches_hf(hf_metaspace, corpus, llama_normalizer, tmp_path):
    """Llama 2's tokenizer.json: Prepend + Replace normalizer, no pre-tokenizer (text is not split)."""
    data = json.loads(hf_metaspace.to_str())
    data["pre_tokenizer"] = None
    data["normalizer"] = llama_normalizer
    hf = HFTokenizer.from_str(json.dumps(data))
    ours = Tokenizer.from_file(save_hf(hf, tmp_path))
    assert ours.prepend_scheme == "legacy" and not ours.split_on_space
    assert_same_as_hf(ours, hf, corpus["held_out"][:200_000])


def test_gguf_llama_matches_hf_built_like_llama2(
    hf_metaspace, corpus, llama_normalizer, llama_decoder
):
    """GGUF `llama` vocab (tokens, scores, types; no merges) vs HF BPE with merges made by transformers."""
    vocab = hf_metaspace.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    scores = [
        -float(i) for i in range(len(tokens))
    ]  # earlier merges score higher, as in SentencePiece
    types = [
        UNKNOWN
        if t == "<unk>"
        else CONTROL
        if t in ("<s>", "</s>")
        else BYTE
        if t.startswith("<0x")
        else NORMAL
        for t in tokens
    ]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": vocab["<s>"],
        "tokenizer.ggml.eos_token_id": vocab["</s>"],
        "tokenizer.ggml.unknown_token_id": vocab["<unk>"],
    }
    ours = Tokenizer.from_gguf(metadata)
    assert ours.bos_token == "<s>" and ours.eos_token_ids == (vocab["</s>"],)

    normal = {t: vocab[t] for t, kind in zip(tokens, types, strict=True) if kind == NORMAL}
    merges = generate_merges(
        normal, {t: s for t, s in zip(tokens, scores, strict=True) if t in normal}
    )
    hf = HFTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    data = json.loads(hf.to_str())
    data["normalizer"] = llama_normalizer
    data["decoder"] = llama_decoder
    hf = HFTokenizer.from_str(json.dumps(data))
    text = corpus["held_out"][:200_000].replace("<|endoftext|>", "</s><s>")
    assert_same_as_hf(ours, hf, text)


def test_gguf_gpt2_matches_hf(hf_byte_level, corpus, special_tokens):
    data = json.loads(hf_byte_level.to_str())
    vocab = hf_byte_level.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [CONTROL if t in special_tokens else NORMAL for t in tokens],
        "tokenizer.ggml.merges": [" ".join(m) for m in data["model"]["merges"]],
        "tokenizer.ggml.eos_token_id": vocab["<|endoftext|>"],
        "tokenizer.chat_template": "{{ messages[0]['content'] }}",
    }
    ours = Tokenizer.from_gguf(metadata)
    assert ours.eos_token_ids == (vocab["<|endoftext|>"],)
    assert ours.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"
    assert_same_as_hf(ours, hf_byte_level, corpus["held_out"][:300_000])


def test_hf_reads_what_we_write(hf_byte_level, corpus, tmp_path):
    ours = Tokenizer.from_file(save_hf(hf_byte_level, tmp_path))
    ours.save(tmp_path / "ours.json", format="hf")
    again = HFTokenizer.from_file(str(tmp_path / "ours.json"))
    text = corpus["held_out"][:200_000]
    assert again.encode(text).ids == ours.encode(text)


def test_our_json_round_trips(hf_metaspace, hf_byte_level, corpus, tmp_path):
    text = corpus["held_out"][:100_000]
    for hf in (hf_byte_level, hf_metaspace):
        ours = Tokenizer.from_file(save_hf(hf, tmp_path))
        ours.save(tmp_path / "llm.json")
        again = Tokenizer.from_file(tmp_path / "llm.json")
        assert again.encode(text) == ours.encode(text)
        assert again.tokens == ours.tokens and again.merges == ours.merges


def test_unsupported_hf_model_is_a_clear_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match="WordPiece"):
        Tokenizer.from_file(path)


def test_added_token_flags_and_post_processor_match_hf(hf_byte_level, tmp_path):
    """lstrip/rstrip swallow whitespace, non-special added tokens survive skip_special_tokens,
    and a TemplateProcessing post-processor marks the bos token, as in Llama 3's files."""
    hf = HFTokenizer.from_str(hf_byte_level.to_str())
    hf.add_special_tokens(
        [AddedToken("<|user|>", rstrip=True), AddedToken("<|end|>", lstrip=True, rstrip=True)]
    )
    hf.add_tokens([AddedToken("<|note|>", special=False)])
    bos = hf.token_to_id("<|im_start|>")
    hf.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    ours = Tokenizer.from_file(save_hf(hf, tmp_path))
    assert ours.bos_token_id == bos and ours.add_bos_token
    texts = [
        "<|user|>\n  hello <|end|>\n\n<|user|>x<|end|>",
        "a  <|end|>  b <|note|> c",
        " \t<|user|> \n<|note|><|end|> ",
    ]
    for text in texts:
        assert_same_as_hf(ours, hf, text)
        assert ours.encode(text, add_bos=True) == hf.encode(text).ids
    ours.save(tmp_path / "written.json", format="hf")
    again = HFTokenizer.from_file(str(tmp_path / "written.json"))
    assert [again.encode(t, add_special_tokens=False).ids for t in texts] == [
        ours.encode(t) for t in texts
    ]
    ours.save(tmp_path / "ours.json")
    reloaded = Tokenizer.from_file(tmp_path / "ours.json")
    assert [reloaded.encode(t, add_bos=True) for t in texts] == [hf.encode(t).ids for t in texts]


@pytest.mark.parametrize(
    ("add_prefix_space", "ignore_merges"), [(True, False), (False, True), (True, True)]
)
def test_byte_level_options_match_hf(
    hf_byte_level, corpus, tmp_path, add_prefix_space, ignore_merges
):
    data = json.loads(hf_byte_level.to_str())
    data["pre_tokenizer"]["add_prefix_space"] = add_prefix_space
    data["model"]["ignore_merges"] = ignore_merges
    hf = HFTokenizer.from_str(json.dumps(data))
    ours = Tokenizer.from_file(save_hf(hf, tmp_path))
    assert (ours.add_prefix_space, ours.ignore_merges) == (add_prefix_space, ignore_merges)
    assert_same_as_hf(ours, hf, corpus["held_out"][:200_000])
