"""Tokenizers from GGUF metadata (`tokenizer.ggml.*`), as llama.cpp reads them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llm_tokenizer.errors import TokenizerError
from llm_tokenizer.patterns import (
    DEEPSEEK_LLM_LETTERS,
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    QWEN2_PATTERN,
)
from llm_tokenizer.tokenizer import Tokenizer

# llama.cpp's token types (`tokenizer.ggml.token_type`).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# -- llama.cpp's named pre-tokenizers (`tokenizer.ggml.pre`) ---------------------------------
# Each is a list of regexes applied in turn, every match and every gap between matches becoming
# a piece (= a sequence of isolated HF Splits). Where llama.cpp rewrote a tokenizer.json regex
# for std::regex, the original (which HF tokenizers, and the .out files, follow) is used.
_GPT2 = GPT2_PATTERN
_LLAMA3 = LLAMA3_PATTERN
_QWEN2 = QWEN2_PATTERN
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_MANY_DIGITS = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_JAIS2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)"
    r"|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"
)
_CASED_WORDS = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+CONTRACTIONS"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*CONTRACTIONS"
)
_TEKKEN = (
    _CASED_WORDS.replace("CONTRACTIONS", "")
    + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    _CASED_WORDS.replace("CONTRACTIONS", _CONTRACTIONS + "?")
    + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK3 = (
    r"\p{N}{1,3}",
    r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_BLOOM = (r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+",)
_STARCODER = (r"\p{N}", _GPT2)

LLAMA_CPP_PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    **dict.fromkeys(
        [
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
            "chatglm-bpe",
            "glm4",
            "glm5",
        ],
        (_LLAMA3,),
    ),
    "jais-2": (_JAIS2,),
    "minicpm5": (r"\p{N}{1,3}", _LLAMA3_MANY_DIGITS),
    "deepseek-llm": [
        r"[\r\n]",
        DEEPSEEK_LLM_LETTERS,
        # llama.cpp turns non-ASCII whitespace into \v before matching, so the class's U+3000
        # (ideographic space) never matches there: it is left out here.
        r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3001-\u3002]+",
        r"\s+\Z",  # std::regex's `$` (end of the piece; Python's `$` also matches before a final \n)
        r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
        r"\p{N}+",
    ],
    "deepseek-coder": [
        r"[\r\n]",
        r"\s?\p{L}+",
        r"\s?\p{P}+",
        r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
        r"\p{N}",
    ],
    **dict.fromkeys(["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"], _DEEPSEEK3),
    "spark2_5": [
        r"\p{N}{1,3}",
        r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
        r"\p{N}",
    ],
    "youtu": [
        r"[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
        _CASED_WORDS.replace("CONTRACTIONS", _CONTRACTIONS + "?")
        + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ],
    "falcon": [
        r"[\p{P}\$\+<=>\^~\|`]+",
        _GPT2,
        r"[0-9][0-9][0-9]",
    ],
    **dict.fromkeys(
        [
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        _STARCODER,
    ),
    **dict.fromkeys(
        [
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
        ],
        (_GPT2,),
    ),
    **dict.fromkeys(
        [
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "stablelm2",
            "megrez",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        (_QWEN2,),
    ),
    "qwen35": (_QWEN35,),
    **dict.fromkeys(["poro-chat", "bloom", "gpt3-finnish"], _BLOOM),
    "viking": [*_BLOOM, r"\p{N}"],
    "tekken": (_TEKKEN,),
    "chameleon": [
        r"<sentinel:[0-9]+>",
        r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        r"([\t\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        _GPT2,
    ],
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], (_GPT4O,)),
    "granite-embed-multi-97m": [  # llama.cpp's own spelling (no tokenizer.json original)
        r"[^\r\n\p{L}\p{N}]?(?:(?=[\p{L}\p{M}])[^a-z])*(?:(?=[\p{L}\p{M}])[^A-Z])+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|[^\r\n\p{L}\p{N}]?(?:(?=[\p{L}\p{M}])[^a-z])+(?:(?=[\p{L}\p{M}])[^A-Z])*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    **dict.fromkeys(
        ["tiny_aya", "cohere2moe"],
        (r"\d{1,3}(?=(?:\d{3})*\b)", _GPT4O),
    ),
    **dict.fromkeys(
        ["bailingmoe", "bailingmoe2", "llada-moe"],
        (
            r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"
            r"|\s*[\r\n]|\s+(?!\S)|\s+",
        ),
    ),
    "seed-coder": [
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    ],
    "ufakzeka": [
        r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "laguna": [r"[^\n]+|[\n]+", _QWEN2],
    "exaone-moe": [
        _CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
        r"|\s*[\r\n]|\s+(?!\S)|\s+"
    ],
}
# Pre-tokenizers after which llama.cpp maps a piece that is itself a token straight to it
# (HF's BPE `ignore_merges`, as the Llama 3 tokenizer.json sets).
LLAMA_CPP_IGNORE_MERGES = frozenset(
    ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
     "jina-v5-nano", "minicpm5", "youtu", "glm4", "glm5", "tekken", "granite-embed-multi-97m"]
)  # fmt: skip
# Pre-tokenizers for which llama.cpp adds BOS when `tokenizer.ggml.add_bos_token` is absent.
LLAMA_CPP_ADD_BOS = frozenset(
    ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
     "jina-v5-nano", "tekken", "chameleon"]
)  # fmt: skip
# Tokens that llama.cpp makes control tokens by their text, whatever their type says (its
# workaround for converted models that typed them NORMAL; HF has them as special added tokens).
LLAMA_CPP_CONTROL_BY_TEXT = frozenset(
    ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
     "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
     "<|eom_id|>", "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
     "▁<PRE>", "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
     "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>",
     "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
     "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>",
     "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>", "<|return|>",
     "<|call|>", "<|flush|>", "<|calls|>", "</s>", "<eos>", "<turn|>", "<|tool_response>",
     "[e~["]
)  # fmt: skip
# Tokenizer models llama.cpp knows that are not BPE, named by the algorithm they use.
OTHER_MODELS = {
    "bert": "WordPiece",
    "t5": "Unigram",
    "rwkv": "RWKV greedy",
    "plamo2": "PLaMo-2 Unigram-like",
}
# Known to llama.cpp but split by hand-written code (or not byte-level), which we do not carry.
LLAMA_CPP_UNSUPPORTED = frozenset(
    ["kimi-k2", "afmoe", "superbpe", "gemma4", "granite-embed-multi-311m", "sarvam-moe",
     "whitespace"]
)  # fmt: skip


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
    # llama.cpp matches control, user-defined and unknown tokens in text (`special=True`).
    special = {
        t: i
        for i, (t, kind) in enumerate(zip(tokens, token_types, strict=True))
        if kind in (CONTROL, USER_DEFINED, UNKNOWN)
        or (t in LLAMA_CPP_CONTROL_BY_TEXT and kind != UNUSED)
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
        "add_bos_token": model == "gemma4"  # llama.cpp forces it for Gemma 4
        or bool(
            metadata.get(
                "tokenizer.ggml.add_bos_token",
                model == "llama" or metadata.get("tokenizer.ggml.pre") in LLAMA_CPP_ADD_BOS,
            )
        ),
        "eos_token": name_of("eos"),
        "extra_eos_tokens": [n for n in (name_of("eot"), name_of("eom")) if n is not None],
        "pad_token": name_of("padding"),
        "chat_template": metadata.get("tokenizer.chat_template"),
    }
    if model == "gpt2":
        pre = metadata.get("tokenizer.ggml.pre") or "default"
        if pre not in LLAMA_CPP_PRE_TOKENIZERS:
            why = (
                "llama.cpp splits it with hand-written code that llm-tokenizer does not carry"
                if pre in LLAMA_CPP_UNSUPPORTED
                else "unknown to llm-tokenizer"
            )
            raise TokenizerError(
                f"unsupported GGUF pre-tokenizer {pre!r} ({why}); supported: "
                f"{', '.join(sorted(LLAMA_CPP_PRE_TOKENIZERS))}"
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
            tokens,
            merges,
            kind="byte_level",
            pattern=LLAMA_CPP_PRE_TOKENIZERS[pre],
            ignore_merges=pre in LLAMA_CPP_IGNORE_MERGES,
            **common,
        )
    if model == "gemma4":
        # BPE with ranked merges over raw UTF-8 whose spaces are "▁" (no prefix space), with
        # <0xNN> byte fallback. llama.cpp also cuts the text at newlines first; no token mixes
        # "\n" with other characters, so merges never cross one and the cut changes nothing.
        index = {t: i for i, t in enumerate(tokens)}
        merges = []
        for merge in _required(metadata, "tokenizer.ggml.merges"):
            cut = merge.find(" ", 1)  # as llama.cpp: the first part may itself be a space
            left, right = merge[:cut], merge[cut + 1 :]
            if cut < 0 or left not in index or right not in index:
                raise TokenizerError(
                    f"GGUF merge {merge!r} uses a token missing from the vocabulary"
                )
            merges.append((index[left], index[right]))
        return Tokenizer(
            tokens,
            merges,
            kind="sentencepiece",
            prepend_scheme="never",
            split_on_space=False,
            byte_fallback=True,
            unk_token=name_of("unknown"),
            **common,
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
    kind = f" ({OTHER_MODELS[model]})" if model in OTHER_MODELS else ""
    raise TokenizerError(
        f"unsupported tokenizer.ggml.model {model!r}{kind}; llm-tokenizer reads 'gpt2' "
        "(byte-level BPE) and 'llama' (SentencePiece BPE with byte fallback)"
    )


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
