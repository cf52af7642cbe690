"""Tokenizers from GGUF metadata (`tokenizer.ggml.*`), as llama.cpp reads them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llm_tokenizer.errors import TokenizerError
from llm_tokenizer.patterns import PATTERNS
from llm_tokenizer.tokenizer import Tokenizer

# llama.cpp's token types (`tokenizer.ggml.token_type`).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# `tokenizer.ggml.pre` -> our pattern name, for the pre-tokenizers whose regex we carry.
GGUF_PRE_TOKENIZERS = {
    "default": "gpt2",
    "gpt-2": "gpt2",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "dbrx": "llama3",
    "smaug-bpe": "llama3",
    "qwen2": "qwen2",
}


def tokenizer_from_gguf(metadata: Mapping[str, Any]) -> Tokenizer:
    """See `Tokenizer.from_gguf`; turns badly typed metadata into TokenizerError."""
    try:
        return _tokenizer_from_gguf(metadata)
    except TokenizerError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise TokenizerError(
            f"malformed GGUF tokenizer metadata: {type(e).__name__}: {e}"
        ) from None


def _tokenizer_from_gguf(metadata: Mapping[str, Any]) -> Tokenizer:
    """`metadata` maps GGUF keys to plain Python values (lists, ints, floats, strings), as
    `gguf.GGUFReader` fields decode to. `gpt2` models are byte-level BPE with explicit merges;
    `llama` models are SentencePiece BPE whose merge order comes from the token scores.
    """
    model = metadata.get("tokenizer.ggml.model")
    tokens: Sequence[str] = _required(metadata, "tokenizer.ggml.tokens")
    token_types: Sequence[int] = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(token_types) != len(tokens):
        raise TokenizerError("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length")
    special = {
        t: i
        for i, (t, kind) in enumerate(zip(tokens, token_types, strict=True))
        if kind in (CONTROL, USER_DEFINED)
    }

    def name_of(key: str) -> str | None:
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is None:
            return None
        if not 0 <= token_id < len(tokens):
            raise TokenizerError(
                f"tokenizer.ggml.{key}_token_id {token_id} is outside the vocabulary"
            )
        return tokens[token_id]

    common = {
        "special_tokens": special,
        "text_added_tokens": [
            t for t, kind in zip(tokens, token_types, strict=True) if kind == USER_DEFINED
        ],
        "bos_token": name_of("bos"),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", model == "llama")),
        "eos_token": name_of("eos"),
        "extra_eos_tokens": [n for n in (name_of("eot"), name_of("eom")) if n is not None],
        "pad_token": name_of("padding"),
        "chat_template": metadata.get("tokenizer.chat_template"),
    }
    if model == "gpt2":
        pre = metadata.get("tokenizer.ggml.pre", "default")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise TokenizerError(
                f"unsupported GGUF pre-tokenizer {pre!r}; known: {sorted(GGUF_PRE_TOKENIZERS)}"
            )
        index = {t: i for i, t in enumerate(tokens)}
        merges = []
        for merge in _required(metadata, "tokenizer.ggml.merges"):
            left, right = merge.split(" ", 1)
            if left not in index or right not in index:
                raise TokenizerError(
                    f"GGUF merge {merge!r} uses a token missing from the vocabulary"
                )
            merges.append((index[left], index[right]))
        return Tokenizer(
            tokens, merges, kind="byte_level", pattern=PATTERNS[GGUF_PRE_TOKENIZERS[pre]], **common
        )
    if model == "llama":
        scores: Sequence[float] = _required(metadata, "tokenizer.ggml.scores")
        add_space_prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
        unk_token = name_of("unknown")
        merges = _merges_from_scores(tokens, scores, token_types)
        return Tokenizer(
            tokens,
            merges,
            kind="sentencepiece",
            prepend_scheme="legacy" if add_space_prefix else "never",
            split_on_space=False,
            byte_fallback=True,
            unk_token=unk_token,
            **common,
        )
    raise TokenizerError(f"unsupported tokenizer.ggml.model {model!r}; expected 'gpt2' or 'llama'")


def _required(metadata: Mapping[str, Any], key: str) -> Any:
    if key not in metadata:
        raise TokenizerError(f"GGUF metadata lacks {key}")
    return metadata[key]


def _merges_from_scores(
    tokens: Sequence[str], scores: Sequence[float], token_types: Sequence[int]
) -> dict[tuple[int, int], int]:
    """SentencePiece BPE as merges: every split of a normal token into two tokens is a merge.

    A pair's rank is its merged token's score, highest first; pairs whose tokens score the same
    share a rank, so the leftmost is merged first, as in llama.cpp's SPM tokenizer.
    """
    if len(scores) != len(tokens):
        raise TokenizerError("tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length")
    index = {
        t: i for i, t in enumerate(tokens) if token_types[i] in (NORMAL, UNKNOWN, UNUSED, BYTE)
    }
    rank_of_score = {s: r for r, s in enumerate(sorted(set(scores), reverse=True))}
    merges: dict[tuple[int, int], int] = {}
    for token, token_id in index.items():
        if token_types[token_id] != NORMAL:
            continue
        for cut in range(1, len(token)):
            left, right = index.get(token[:cut]), index.get(token[cut:])
            if left is not None and right is not None:
                merges[(left, right)] = rank_of_score[scores[token_id]]
    return merges
