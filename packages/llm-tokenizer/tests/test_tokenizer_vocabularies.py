"""Every vocabulary that llama.cpp keeps for its own tokenizer tests (models/ggml-vocab-*.gguf,
from the llama-cpp-python sdist): each BPE / SPM one gives exactly the `.out` ids for every
`.inp` case (ids HF tokenizers wrote) and equals llama-cpp-python's vocab-only `tokenize` on
this project's held-out text; WordPiece / Unigram ones are refused with a clear error."""

from __future__ import annotations

import warnings

import pytest
from llm_tokenizer import Tokenizer, TokenizerError, TokenizerWarning

pytestmark = pytest.mark.peers

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

# The vocabularies in llama.cpp's models/ (a new one fails test_every_vocabulary_is_listed).
BPE_OR_SPM = [
    "aquila", "baichuan", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2",
    "gpt-neox", "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact",
    "starcoder",
]  # fmt: skip
REFUSED = {"bert-bge": "WordPiece", "nomic-bert-moe": "Unigram", "gemma-4": "gemma4"}

HELD_OUT_EXTRA = (
    "def f(x):\n\treturn x ** 2  # square\n\n\n    if x != 0:\n        pass\r\n"
    "東京タワー 서울 北京 🇫🇷👨‍👩‍👧‍👦👍🏽 naïve café Cửa Việt ǅemal\u00a0\u3000\u2028 "
    "I'M YOU'LL we've 1,000,000 3.14159 0xFF ½ १२३ ١٢٣\n   \n\n \t  end   "
)


def metadata_of(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def cases(path) -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs from the .inp / .out files beside a vocabulary."""
    inp = path.with_name(path.name + ".inp")
    if not inp.is_file():
        return []
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
    return [(text, [int(i) for i in out.split()]) for text, out in zip(texts, outs, strict=False)]


def test_every_vocabulary_is_listed(llama_cpp_models):
    found = {
        p.name[len("ggml-vocab-") : -len(".gguf")]
        for p in llama_cpp_models.glob("ggml-vocab-*.gguf")
    }
    assert found == set(BPE_OR_SPM) | set(REFUSED)


@pytest.mark.parametrize("name", BPE_OR_SPM)
def test_vocabulary_matches_llama_cpp(name, llama_cpp_models, corpus):
    path = llama_cpp_models / f"ggml-vocab-{name}.gguf"
    ours = Tokenizer.from_gguf(metadata_of(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenizerWarning)
        wrong = [
            (text, got, expected)
            for text, expected in cases(path)
            if (got := ours.encode(text)) != expected
        ]
        assert not wrong, f"{len(wrong)} .inp cases differ; first: {wrong[0]!r:.600}"
        reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        text = corpus["held_out"][:30_000] + HELD_OUT_EXTRA
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        got = ours.encode(text)
    if got != expected:
        at = next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
        pytest.fail(
            f"held-out text differs at token {at}: ours {[ours.tokens[i] for i in got[at - 2 : at + 3]]}"
            f" vs llama.cpp {[ours.tokens[i] for i in expected[at - 2 : at + 3]]}"
        )
    # BOS as llama.cpp adds it (tokenizer.ggml.add_bos_token, or the pre-tokenizer's default).
    with_bos = reference.tokenize(b"Hello world", add_bos=True, special=True)
    assert ours.encode("Hello world", add_bos=ours.add_bos_token) == with_bos


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_vocabulary_is_refused_clearly(name, llama_cpp_models):
    path = llama_cpp_models / f"ggml-vocab-{name}.gguf"
    with pytest.raises(TokenizerError, match=REFUSED[name]) as refused:
        Tokenizer.from_gguf(metadata_of(path))
    message = str(refused.value)
    assert "\n" not in message and "'gpt2'" in message and "'llama'" in message
