"""Training: same merges and compression as HF tokenizers' BpeTrainer on the same corpus."""

from __future__ import annotations

import json

import pytest
from llm_tokenizer import Tokenizer, TokenizerError
from llm_tokenizer.patterns import GPT2_PATTERN
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers, trainers


def bytes_per_token(encode, text: str) -> float:
    return len(text.encode()) / len(encode(text))


@pytest.fixture(scope="module")
def trained(corpus, special_tokens) -> Tokenizer:
    return Tokenizer.train(
        [corpus["train"]], 4096, pattern="gpt2", special_tokens=special_tokens, min_frequency=2
    )


def test_compression_within_one_percent_of_hf(trained, hf_byte_level, corpus):
    text = corpus["held_out"]
    ours = bytes_per_token(trained.encode, text)
    theirs = bytes_per_token(lambda t: hf_byte_level.encode(t).ids, text)
    assert abs(ours - theirs) / theirs < 0.01, f"ours {ours:.4f} vs HF {theirs:.4f} bytes/token"
    assert trained.vocab_size == hf_byte_level.get_vocab_size() == 4096


def test_merges_are_hf_trainers_merges(trained, hf_byte_level):
    """Ties go to the smallest pair of ids, as in HF's trainer, so the merge lists agree."""
    hf_merges = [tuple(m) for m in json.loads(hf_byte_level.to_str())["model"]["merges"]]
    ours = sorted(trained.merges.items(), key=lambda item: item[1][0])
    our_merges = [(trained.tokens[left], trained.tokens[right]) for (left, right), _ in ours]
    same = sum(a == b for a, b in zip(our_merges, hf_merges, strict=False))
    assert same / len(hf_merges) > 0.99, f"{same} of {len(hf_merges)} merges agree"


def test_split_pattern_compression_within_one_percent_of_hf(corpus, hf_split_pattern):
    ours = Tokenizer.train(
        [corpus["train"][:500_000]],
        1024,
        pattern="llama3",
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    text = corpus["held_out"][:300_000]
    a = bytes_per_token(ours.encode, text)
    b = bytes_per_token(lambda t: hf_split_pattern.encode(t).ids, text)
    assert abs(a - b) / b < 0.01, f"ours {a:.4f} vs HF {b:.4f} bytes/token"


def test_training_is_deterministic_and_reads_files(corpus, tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(corpus["train"][:200_000], encoding="utf-8")
    a = Tokenizer.train([path], 600, pattern="gpt4")
    b = Tokenizer.train([corpus["train"][:200_000]], 600, pattern="gpt4")
    assert a.tokens == b.tokens and a.merges == b.merges and a.vocab_size == 600


def test_special_tokens_take_the_last_ids_and_never_merge(corpus):
    text = corpus["train"][:100_000] + "<|endoftext|>" * 1000
    tokenizer = Tokenizer.train(
        [text], 400, special_tokens=["<|endoftext|>", "<|pad|>"], eos_token="<|endoftext|>"
    )
    assert tokenizer.special_tokens == {"<|endoftext|>": 398, "<|pad|>": 399}
    assert tokenizer.eos_token_ids == (398,)
    assert tokenizer.encode("a<|endoftext|>b<|pad|>")[1::2] == [398, 399]
    assert not any("endoftext" in t for t in tokenizer.tokens[:398])


def test_min_frequency_stops_early_and_ties_go_to_the_smallest_pair():
    tokenizer = Tokenizer.train(["aaab aaab cd"], 1000, pattern=GPT2_PATTERN, min_frequency=2)
    learned = [tokenizer.tokens[i] for i in range(256, tokenizer.vocab_size)]
    assert learned == ["aa", "ab", "aaab"]  # (aa, a) and (a, b) tie at 2; a < aa
    hf = HFTokenizer.from_str(Tokenizer.train(["x"], 256).to_hf_json())
    hf_trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(["aaab aaab cd"], hf_trainer)
    assert sorted(hf.get_vocab(), key=hf.get_vocab().get)[256:] == learned


def test_vocab_size_too_small_is_an_error():
    with pytest.raises(TokenizerError, match="smaller than 256"):
        Tokenizer.train(["text"], 200)


def test_progress_bar_runs(corpus):
    assert Tokenizer.train([corpus["train"][:20_000]], 300, show_progress=True).vocab_size == 300
