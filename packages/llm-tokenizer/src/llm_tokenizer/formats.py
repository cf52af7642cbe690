"""Reading and writing tokenizer files: our JSON and HF tokenizers' tokenizer.json."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import regex

from llm_tokenizer.errors import TokenizerError
from llm_tokenizer.patterns import GPT2_PATTERN
from llm_tokenizer.pretokenizers import (
    DIGIT_PATTERN,
    PUNCTUATION_PATTERN,
    Split,
    pre_tokenizer_json,
)
from llm_tokenizer.tokenizer import NORMALIZATIONS, Tokenizer

FORMAT = "llm-tokenizer"
FORMAT_VERSION = 1


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """See `Tokenizer.from_file`."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "tokenizer.json"]
        if not candidates[0].is_file():
            raise TokenizerError(f"{path} is a directory without a tokenizer.json")
        path = candidates[0]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise TokenizerError(f"{path} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} holds JSON but not a tokenizer object")
    if data.get("format") == FORMAT:
        return _from_llm_json(data, path)
    if "model" in data:
        with _malformed(f"{path} is a malformed HF tokenizer.json"):
            return _from_hf_json(data, _read_hf_config(path.parent))
    raise TokenizerError(f"{path} is neither an llm-tokenizer file nor an HF tokenizer.json")


def tokenizer_from_hf_json(text: str) -> Tokenizer:
    """See `Tokenizer.from_hf_json`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict) or "model" not in data:
        raise TokenizerError("not an HF tokenizer.json: no 'model'")
    with _malformed("malformed HF tokenizer.json"):
        return _from_hf_json(data, {})


def save_tokenizer(
    tokenizer: Tokenizer, path: str | os.PathLike[str], *, format: Literal["llm", "hf"]
) -> None:
    """See `Tokenizer.save`."""
    if format == "llm":
        data = _to_llm_json(tokenizer)
    elif format == "hf":
        data = _to_hf_json(tokenizer)
    else:
        raise TokenizerError(f"unknown tokenizer format {format!r}; expected 'llm' or 'hf'")
    Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


# -- our JSON ----------------------------------------------------------------------------------

_OPTIONS = (
    "kind", "pattern", "normalization", "add_prefix_space", "prepend_scheme", "split_on_space",
    "byte_fallback", "unk_token", "ignore_merges", "bos_token", "add_bos_token", "eos_token",
    "extra_eos_tokens", "pad_token", "chat_template",
)  # fmt: skip
_TOKEN_SETS = ("lstrip_tokens", "rstrip_tokens", "text_added_tokens")


def _to_llm_json(tokenizer: Tokenizer) -> dict[str, Any]:
    ordered = sorted(tokenizer.merges.items(), key=lambda item: item[1][0])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **{name: getattr(tokenizer, name) for name in _OPTIONS},
        "pattern": pre_tokenizer_json(tokenizer.pattern),
        "special_tokens": tokenizer.special_tokens,
        **{name: sorted(getattr(tokenizer, name)) for name in _TOKEN_SETS},
        "tokens": tokenizer.tokens,
        "merges": [[left, right, rank] for (left, right), (rank, _) in ordered],  # rank order
    }


def _from_llm_json(data: dict[str, Any], path: Path) -> Tokenizer:
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise TokenizerError(
            f"{path} has format_version {version}; this llm-tokenizer reads {FORMAT_VERSION}"
        )
    with _malformed(f"{path} is a malformed llm-tokenizer file"):
        merges = {(left, right): rank for left, right, rank in data["merges"]}
        options = {name: data[name] for name in _OPTIONS + _TOKEN_SETS if name in data}
        return Tokenizer(data["tokens"], merges, special_tokens=data["special_tokens"], **options)


@contextlib.contextmanager
def _malformed(what: str) -> Iterator[None]:
    """Turn the errors that a file of the wrong shape causes into one TokenizerError."""
    try:
        yield
    except TokenizerError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise TokenizerError(f"{what}: {type(e).__name__}: {e}") from None


# -- HF tokenizer.json -----------------------------------------------------------------------


def _read_hf_config(directory: Path) -> dict[str, Any]:
    """Chat template, bos/eos/pad tokens and eos ids from tokenizer_config.json,
    chat_template.jinja and generation_config.json, where present."""
    config: dict[str, Any] = {}
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = raw.get(name)
            config[name] = value.get("content") if isinstance(value, dict) else value
        if "add_bos_token" in raw:
            config["add_bos_token"] = bool(raw["add_bos_token"])
        template = raw.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        config["chat_template"] = template
    template_path = directory / "chat_template.jinja"  # where newer transformers versions save it
    if template_path.is_file():
        config["chat_template"] = template_path.read_text(encoding="utf-8")
    generation_path = directory / "generation_config.json"
    if generation_path.is_file():
        eos = json.loads(generation_path.read_text(encoding="utf-8")).get("eos_token_id")
        config["eos_token_ids"] = [eos] if isinstance(eos, int) else list(eos or [])
    return config


_HF_BEHAVIORS = {
    "Isolated": "isolated",
    "Removed": "removed",
    "MergedWithPrevious": "merged_with_previous",
    "MergedWithNext": "merged_with_next",
    "Contiguous": "contiguous",
}


def _hf_split(step: dict[str, Any]) -> Split:
    """Our Split for an HF pre-tokenizer step that cuts text (not ByteLevel / Metaspace)."""
    kind = step.get("type")
    if kind == "Split":
        pattern = step["pattern"]
        source = pattern["Regex"] if "Regex" in pattern else regex.escape(pattern["String"])
        behavior = _HF_BEHAVIORS.get(step.get("behavior"))
        if behavior is None:
            raise TokenizerError(f"unsupported HF Split behavior {step.get('behavior')!r}")
        return Split(source, behavior, bool(step.get("invert", False)))  # type: ignore[arg-type]
    if kind == "Digits":
        return Split(DIGIT_PATTERN, "isolated" if step.get("individual_digits") else "contiguous")
    if kind == "Punctuation":
        behavior = _HF_BEHAVIORS.get(step.get("behavior", "Isolated"))
        if behavior is None:
            raise TokenizerError(f"unsupported HF Punctuation behavior {step.get('behavior')!r}")
        return Split(PUNCTUATION_PATTERN, behavior)  # type: ignore[arg-type]
    if kind == "Whitespace":
        return Split(r"\w+|[^\w\s]+", "removed", invert=True)
    if kind == "WhitespaceSplit":
        return Split(r"\s+", "removed")
    raise TokenizerError(f"unsupported HF pre_tokenizer step {json.dumps(step)[:200]}")


def _pre_tokenizer_options(pre: dict[str, Any] | None) -> dict[str, Any]:
    """Our options for an HF pre_tokenizer; raises TokenizerError for what we cannot match.

    Byte-level: a ByteLevel step, alone or last in a Sequence after Split / Digits /
    Punctuation / Whitespace steps. SentencePiece-style: Metaspace.
    """
    if pre is None:
        return {}
    kind = pre.get("type")
    if kind == "Metaspace":
        if pre.get("replacement", "▁") != "▁":
            raise TokenizerError(f"unsupported Metaspace replacement {pre['replacement']!r}")
        scheme = pre.get("prepend_scheme")
        if scheme is None:  # tokenizers < 0.14 wrote add_prefix_space instead
            scheme = "always" if pre.get("add_prefix_space", True) else "never"
        return {
            "kind": "sentencepiece",
            "prepend_scheme": scheme,
            "split_on_space": bool(pre.get("split", True)),
        }
    steps = pre.get("pretokenizers", []) if kind == "Sequence" else [pre]
    if not steps or steps[-1].get("type") != "ByteLevel":
        raise TokenizerError(
            f"unsupported HF pre_tokenizer {json.dumps(pre)[:200]}: byte-level BPE needs a final "
            "ByteLevel step (or Metaspace for SentencePiece-style BPE)"
        )
    byte_level = steps[-1]
    splits = [_hf_split(step) for step in steps[:-1]]
    if splits and byte_level.get("add_prefix_space", False):
        raise TokenizerError(
            "unsupported HF pre_tokenizer: ByteLevel with add_prefix_space after other steps "
            "(HF then prefixes every piece with a space)"
        )
    if byte_level.get("use_regex", True):
        splits.append(Split(GPT2_PATTERN))
    return {
        "kind": "byte_level",
        "pattern": splits or None,
        "add_prefix_space": bool(byte_level.get("add_prefix_space", False)),
    }


def _normalizer_options(normalizer: dict[str, Any] | None) -> dict[str, Any]:
    """Our options for an HF normalizer; raises TokenizerError for what we cannot match.

    A Unicode normal form (NFC, NFD, NFKC, NFKD) first, then Llama 2's Prepend + Replace or a
    lone Replace of spaces by "▁" (SentencePiece-style text that is not split on spaces).
    """
    if normalizer is None:
        return {}
    steps = (
        normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    )
    options: dict[str, Any] = {}
    if steps and steps[0].get("type") in NORMALIZATIONS:
        options["normalization"] = steps[0]["type"]
        steps = steps[1:]
    kinds = [(s.get("type"), s.get("prepend"), s.get("content")) for s in steps]
    replace_space = ("Replace", None, "▁")
    if all(s.get("type") != "Replace" or s.get("pattern") == {"String": " "} for s in steps):
        if not kinds:
            return options
        if kinds == [("Prepend", "▁", None), replace_space]:  # Llama 2's legacy normalizer
            return {
                **options,
                "kind": "sentencepiece",
                "prepend_scheme": "legacy",
                "split_on_space": False,
            }
        if kinds == [replace_space]:
            return {
                **options,
                "kind": "sentencepiece",
                "prepend_scheme": "never",
                "split_on_space": False,
            }
    raise TokenizerError(f"unsupported HF normalizer {json.dumps(normalizer)[:200]}")


def _from_hf_json(data: dict[str, Any], config: dict[str, Any]) -> Tokenizer:
    model = data["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(
            f"unsupported HF model type {model.get('type')!r}; llm-tokenizer supports BPE only "
            "(byte-level, or SentencePiece-style with byte fallback), not WordPiece, Unigram "
            "or WordLevel"
        )
    if (
        model.get("dropout")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
    ):
        raise TokenizerError(
            "unsupported HF BPE options: dropout, continuing_subword_prefix or end_of_word_suffix"
        )
    options = {
        **_normalizer_options(data.get("normalizer")),
        **_pre_tokenizer_options(data.get("pre_tokenizer")),
    }
    if "kind" not in options:
        raise TokenizerError(
            "HF tokenizer.json has neither a ByteLevel nor a SentencePiece-style pre-tokenizer"
        )

    vocab: dict[str, int] = model["vocab"]
    added_tokens = data.get("added_tokens", [])
    added = {t["content"]: t["id"] for t in added_tokens}
    size = max([*vocab.values(), *added.values()]) + 1
    tokens = [""] * size
    for token, token_id in vocab.items():
        tokens[token_id] = token
    merges = []
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left not in vocab or right not in vocab:
            raise TokenizerError(
                f"HF merge {left!r} {right!r} uses a token missing from the vocabulary"
            )
        merges.append((vocab[left], vocab[right]))

    # Llama 3 and others say "add bos" only through the post-processor: "<|begin_of_text|> $A".
    bos_token, add_bos_token = config.get("bos_token"), config.get("add_bos_token")
    processor = data.get("post_processor") or {}
    first = (
        (processor.get("single") or [{}])[0]
        if processor.get("type") == "TemplateProcessing"
        else {}
    )
    if "SpecialToken" in first:
        bos_token = bos_token or first["SpecialToken"]["id"]
        add_bos_token = True if add_bos_token is None else add_bos_token

    eos_ids = config.get("eos_token_ids", [])
    eos_token = config.get("eos_token")
    extra_eos = [tokens[i] for i in eos_ids if 0 <= i < size and tokens[i] != eos_token]
    if eos_token is None and extra_eos:
        eos_token, extra_eos = extra_eos[0], extra_eos[1:]
    return Tokenizer(
        tokens,
        merges,
        special_tokens=added,
        lstrip_tokens=[t["content"] for t in added_tokens if t.get("lstrip")],
        rstrip_tokens=[t["content"] for t in added_tokens if t.get("rstrip")],
        text_added_tokens=[t["content"] for t in added_tokens if not t.get("special", True)],
        byte_fallback=bool(model.get("byte_fallback", False)),
        unk_token=model.get("unk_token"),
        ignore_merges=bool(model.get("ignore_merges", False)),
        bos_token=bos_token,
        add_bos_token=bool(add_bos_token),
        eos_token=eos_token,
        extra_eos_tokens=extra_eos,
        pad_token=config.get("pad_token"),
        chat_template=config.get("chat_template"),
        **options,
    )


def hf_json(tokenizer: Tokenizer) -> str:
    """See `Tokenizer.to_hf_json`."""
    return json.dumps(_to_hf_json(tokenizer), ensure_ascii=False)


def _to_hf_json(tokenizer: Tokenizer) -> dict[str, Any]:
    if tokenizer.kind != "byte_level":
        raise TokenizerError("only byte-level tokenizers can be written as HF tokenizer.json")
    ordered = sorted(tokenizer.merges.items(), key=lambda item: item[1][0])
    ranks = [rank for _, (rank, _) in ordered]
    if len(set(ranks)) != len(ranks):
        raise TokenizerError("merges with equal ranks cannot be written as an HF merge list")
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": tokenizer.add_prefix_space,
        "trim_offsets": True,
    }
    if tokenizer.pattern == GPT2_PATTERN:
        pre_tokenizer = {**byte_level, "use_regex": True}
    elif tokenizer.pattern is None:
        pre_tokenizer = {**byte_level, "use_regex": False}
    else:
        steps = (
            (Split(tokenizer.pattern),) if isinstance(tokenizer.pattern, str) else tokenizer.pattern
        )
        hf_behavior = {ours: theirs for theirs, ours in _HF_BEHAVIORS.items()}
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [
                *(
                    {
                        "type": "Split",
                        "pattern": {"Regex": step.pattern},
                        "behavior": hf_behavior[step.behavior],
                        "invert": step.invert,
                    }
                    for step in steps
                ),
                {**byte_level, "use_regex": False},
            ],
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": t in tokenizer.lstrip_tokens,
                "rstrip": t in tokenizer.rstrip_tokens,
                "normalized": False,
                "special": t not in tokenizer.text_added_tokens,
            }
            for t, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
        ],
        "normalizer": {"type": tokenizer.normalization} if tokenizer.normalization else None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tokenizer.ignore_merges,
            "vocab": {
                t: i for i, t in enumerate(tokenizer.tokens) if t
            },  # HF keeps special tokens here too
            "merges": [
                [tokenizer.tokens[left], tokenizer.tokens[right]] for (left, right), _ in ordered
            ],
        },
    }
