"""The Tokenizer: byte-level BPE (GPT-2 style) or SentencePiece-style BPE with byte fallback."""

from __future__ import annotations

import bisect
import itertools
import os
import unicodedata
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import regex

from llm_tokenizer.bpe import Merges, merge_word
from llm_tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat_template_with_spans
from llm_tokenizer.errors import DisallowedSpecialTokenError, TokenizerError, TokenizerWarning
from llm_tokenizer.patterns import bytes_to_unicode, unicode_to_bytes
from llm_tokenizer.pretokenizers import (
    PreTokenizer,
    Split,
    compile_pre_tokenizer,
    normalize_pre_tokenizer,
)

if TYPE_CHECKING:
    from llm_tokenizer.streaming import IncrementalDecoder

Kind = Literal["byte_level", "sentencepiece"]
# How SentencePiece text gets its leading "▁": "always" (HF Metaspace) prepends to every text
# segment not already starting with one, "first" only to the segment at the start of the text,
# "legacy" (Llama-2's Prepend normalizer, llama.cpp) to every segment unconditionally.
PrependScheme = Literal["always", "first", "legacy", "never"]
Normalization = Literal["NFC", "NFD", "NFKC", "NFKD"]
NORMALIZATIONS = ("NFC", "NFD", "NFKC", "NFKD")

SPACE_MARKER = "▁"  # U+2581, SentencePiece's stand-in for a space
# HF Metaspace's split: every "▁" starts a new piece ("a▁▁b" -> "a", "▁", "▁b").
_SPACE_SPLIT = regex.compile(f"{SPACE_MARKER}[^{SPACE_MARKER}]*|[^{SPACE_MARKER}]+")
_BYTE_TOKEN = regex.compile(r"<0x([0-9A-Fa-f]{2})>")
_CACHED_WORD_CHARS = 256  # longer pre-tokens are merged every time rather than cached


class _LostBytes(Exception):
    """A pre-token holds bytes that the vocabulary cannot spell: `ids` without them, and them."""

    def __init__(self, ids: tuple[int, ...], lost: bytes):
        super().__init__()
        self.ids = ids
        self.lost = lost


class _WordCache(dict):
    """Pre-token -> token ids; a miss computes the ids and stores them (cleared when full)."""

    def __init__(self, compute: Callable[[str], tuple[int, ...]], capacity: int):
        super().__init__()
        self.compute = compute
        self.capacity = capacity

    def __missing__(self, word: str) -> tuple[int, ...]:
        ids = self.compute(word)
        if self.capacity and len(word) <= _CACHED_WORD_CHARS:
            if len(self) >= self.capacity:
                self.clear()
            self[word] = ids
        return ids


class Tokenizer:
    """A BPE tokenizer: pre-tokenize, merge, map to ids; special tokens are matched first.

    Two kinds share the merge engine. `byte_level` (GPT-2, Llama 3, Qwen) splits text with a
    regex and merges UTF-8 bytes, so every string encodes. `sentencepiece` (Llama 2, GGUF
    `llama`) replaces spaces by "▁", merges characters, and spells characters missing from the
    vocabulary as `<0xXX>` byte tokens.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Iterable[tuple[int, int]] | Mapping[tuple[int, int], int],
        *,
        kind: Kind = "byte_level",
        pattern: str | Sequence[str | Split] | None = "gpt4",
        special_tokens: Mapping[str, int] | None = None,
        lstrip_tokens: Collection[str] = (),
        rstrip_tokens: Collection[str] = (),
        text_added_tokens: Collection[str] = (),
        normalization: Normalization | None = None,
        add_prefix_space: bool = False,
        prepend_scheme: PrependScheme = "always",
        split_on_space: bool = True,
        byte_fallback: bool = True,
        unk_token: str | None = None,
        ignore_merges: bool = False,
        bos_token: str | None = None,
        add_bos_token: bool = False,
        eos_token: str | None = None,
        extra_eos_tokens: Sequence[str] = (),
        pad_token: str | None = None,
        chat_template: str | None = None,
        cache_size: int = 1 << 18,
    ):
        """Build a tokenizer from its vocabulary and ranked merges.

        tokens: the token string of every id (byte-level tokens in GPT-2's unicode spelling,
            SentencePiece tokens with "▁"); special tokens may be listed here or only in
            `special_tokens` (content -> id), which `encode` matches in text before anything
            else. lstrip_tokens / rstrip_tokens: special tokens that swallow the whitespace on
            their left / right (HF's lstrip / rstrip). text_added_tokens: special tokens that
            HF calls non-special added tokens; `decode(skip_special_tokens=True)` keeps them.
            add_bos_token: informational, whether the model expects the bos id first (HF's
            `add_bos_token`, GGUF's `tokenizer.ggml.add_bos_token`); `encode(add_bos=True)`
            adds it. merges: pairs of ids in rank order, or a mapping pair -> rank
            (equal ranks are merged leftmost first). pattern: the byte-level pre-tokenizer, a
            name in `PATTERNS`, a regex, or a sequence of `Split` steps (a regex in it is an
            isolated Split), as llama.cpp's named pre-tokenizers and HF `Sequence` are; None:
            no split. normalization: "NFC", "NFD", "NFKC" or "NFKD" normalizes text first.
            add_prefix_space: byte-level, prepend " " to text not starting with one.
            prepend_scheme / split_on_space / byte_fallback / unk_token: sentencepiece options.
            ignore_merges: a pre-token that is itself in the vocabulary maps straight to its id.
            cache_size: pre-tokens whose ids are cached (0 disables the cache).

        A byte-level vocabulary may lack some of the 256 byte tokens (SmolLM2's lacks 21
        control bytes): such a byte is dropped from the ids, as HF tokenizers and llama.cpp do,
        with one warning the first time; `encode(strict=True)` raises instead.

        Raises TokenizerError when a merge produces a token missing from `tokens`, an id is
        out of range, a named token (bos, eos, pad, unk) is not in the vocabulary, or an
        option has an unknown value.
        """
        if kind not in ("byte_level", "sentencepiece"):
            raise TokenizerError(f"unknown tokenizer kind {kind!r}")
        if prepend_scheme not in ("always", "first", "legacy", "never"):
            raise TokenizerError(f"unknown prepend_scheme {prepend_scheme!r}")
        if normalization is not None and normalization not in NORMALIZATIONS:
            raise TokenizerError(
                f"unsupported normalization {normalization!r}; expected one of {list(NORMALIZATIONS)}"
            )
        special_tokens = dict(special_tokens or {})
        size = max([len(tokens) - 1, *special_tokens.values()]) + 1
        table = list(tokens) + [""] * (size - len(tokens))
        for content, token_id in special_tokens.items():
            if token_id < 0:
                raise TokenizerError(f"special token {content!r} has negative id {token_id}")
            table[token_id] = content
        self.tokens: list[str] = table
        self.kind: Kind = kind
        self.pattern: PreTokenizer = normalize_pre_tokenizer(pattern)
        self.special_tokens = special_tokens
        self.lstrip_tokens = frozenset(lstrip_tokens)
        self.rstrip_tokens = frozenset(rstrip_tokens)
        self.text_added_tokens = frozenset(text_added_tokens)
        unknown = (
            self.lstrip_tokens | self.rstrip_tokens | self.text_added_tokens
        ) - special_tokens.keys()
        if unknown:
            raise TokenizerError(
                f"strip or text flags given for tokens that are not special: {sorted(unknown)}"
            )
        self._special_ids = frozenset(special_tokens.values())
        self._skipped_ids = frozenset(
            i for t, i in special_tokens.items() if t not in self.text_added_tokens
        )
        self.normalization = normalization
        self.add_prefix_space = add_prefix_space
        self.prepend_scheme: PrependScheme = prepend_scheme
        self.split_on_space = split_on_space
        self.byte_fallback = byte_fallback
        self.unk_token = unk_token
        self.ignore_merges = ignore_merges
        self.bos_token = bos_token
        self.add_bos_token = add_bos_token
        self.eos_token = eos_token
        self.extra_eos_tokens = tuple(extra_eos_tokens)
        self.pad_token = pad_token
        self.chat_template = chat_template

        # Ordinary tokens only: special tokens are reached by matching their text, never by merges.
        self.token_to_id: dict[str, int] = {}
        for token_id, token in enumerate(tokens):
            if token and token_id not in self._special_ids:
                self.token_to_id.setdefault(token, token_id)
        for name in (bos_token, eos_token, pad_token, unk_token, *self.extra_eos_tokens):
            if name is not None and self.token_id(name) is None:
                raise TokenizerError(f"token {name!r} is not in the vocabulary")

        ranked = (
            merges.items()
            if isinstance(merges, Mapping)
            else ((p, r) for r, p in enumerate(merges))
        )
        self.merges: Merges = {}
        for (left, right), rank in ranked:
            if not (0 <= left < size and 0 <= right < size):
                raise TokenizerError(
                    f"merge ({left}, {right}) refers to an id outside the vocabulary"
                )
            merged = self.token_id(self.tokens[left] + self.tokens[right])  # may be special
            if merged is None:
                raise TokenizerError(
                    f"merge {self.tokens[left]!r} + {self.tokens[right]!r} makes a token missing from the vocabulary"
                )
            self.merges.setdefault((left, right), (rank, merged))

        self.token_bytes: list[bytes] = [self._bytes_of(i, t) for i, t in enumerate(self.tokens)]
        if kind == "byte_level":
            byte_chars = bytes_to_unicode()
            self._byte_ids = [self.token_to_id.get(byte_chars[b], -1) for b in range(256)]
        else:
            # Byte fallback finds `<0xNN>` wherever the vocabulary keeps it: many vocabularies
            # register the byte tokens as added (special) tokens.
            self._byte_ids = [
                -1 if (i := self.token_id(f"<0x{b:02X}>")) is None else i for b in range(256)
            ]
        # Bytes that a byte-level vocabulary cannot spell: dropped, as HF and llama.cpp do.
        self.missing_bytes: bytes = (
            bytes(b for b in range(256) if self._byte_ids[b] < 0) if kind == "byte_level" else b""
        )
        self._warned_lost = False
        self._unk_id = self.token_id(unk_token) if unk_token is not None else None
        self._split = compile_pre_tokenizer(self.pattern)
        self._special_regex = self._compile_special_regex(special_tokens)
        self._allowed_regexes: dict[
            frozenset[str], tuple[regex.Pattern[str], list[str]] | None
        ] = {}
        self._word_ids = _WordCache(
            self._encode_byte_level_word
            if kind == "byte_level"
            else self._encode_sentencepiece_word,
            cache_size,
        )

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load our JSON, an HF `tokenizer.json`, or a directory holding either (detected).

        A `tokenizer_config.json` (chat template, bos/eos tokens, add_bos_token),
        `chat_template.jinja` and `generation_config.json` (eos ids) beside an HF file are read
        too. Raises OSError when the file cannot be read
        and TokenizerError when its content is invalid or unsupported.
        """
        from llm_tokenizer.formats import load_tokenizer

        return load_tokenizer(path)

    @classmethod
    def from_hf_json(cls, text: str) -> Tokenizer:
        """Build from the text of an HF tokenizer.json; raises TokenizerError as `from_file` does."""
        from llm_tokenizer.formats import tokenizer_from_hf_json

        return tokenizer_from_hf_json(text)

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF metadata (`tokenizer.ggml.*` keys, `tokenizer.chat_template`).

        Raises TokenizerError when the model kind is not `gpt2` or `llama` or keys are missing.
        """
        from llm_tokenizer.gguf import tokenizer_from_gguf

        return tokenizer_from_gguf(metadata)

    @classmethod
    def train(
        cls,
        files_or_texts: Iterable[str | os.PathLike[str]],
        vocab_size: int,
        *,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (),
        min_frequency: int = 2,
        normalization: Normalization | None = None,
        eos_token: str | None = None,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE tokenizer; see `llm_tokenizer.training.train_bpe`.

        `files_or_texts` holds paths (`pathlib.Path` or other `os.PathLike`, read as UTF-8)
        and/or strings (taken as text). `vocab_size` counts the 256 bytes, the merges and the
        special tokens. Raises TokenizerError when vocab_size < 256 + len(special_tokens) and
        OSError when a file cannot be read.
        """
        from llm_tokenizer.training import train_bpe

        return train_bpe(
            files_or_texts,
            vocab_size,
            pattern=pattern,
            special_tokens=special_tokens,
            min_frequency=min_frequency,
            normalization=normalization,
            eos_token=eos_token,
            show_progress=show_progress,
        )

    def save(self, path: str | os.PathLike[str], *, format: Literal["llm", "hf"] = "llm") -> None:
        """Write this tokenizer as our JSON (`format="llm"`) or an HF tokenizer.json (`"hf"`).

        Raises TokenizerError for `"hf"` on a tokenizer that HF's format cannot express
        (sentencepiece kind, merges without a strict rank order) and OSError on write failure.
        """
        from llm_tokenizer.formats import save_tokenizer

        save_tokenizer(self, path, format=format)

    def to_hf_json(self) -> str:
        """This tokenizer as an HF tokenizer.json string; raises TokenizerError as `save` does."""
        from llm_tokenizer.formats import hf_json

        return hf_json(self)

    # -- properties of the vocabulary ----------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (one more than the largest id)."""
        return len(self.tokens)

    def token_id(self, token: str) -> int | None:
        """The id of a special or ordinary token string, or None."""
        return self.special_tokens.get(token, self.token_to_id.get(token))

    @property
    def cache_size(self) -> int:
        """How many pre-tokens the word cache holds before it is cleared (0: no cache)."""
        return self._word_ids.capacity

    @cache_size.setter
    def cache_size(self, entries: int) -> None:
        self._word_ids.clear()
        self._word_ids.capacity = entries

    @property
    def bos_token_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None."""
        return self.token_id(self.bos_token) if self.bos_token is not None else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation: the eos token, then any extra ones (e.g. Llama 3's <|eot_id|>)."""
        names = ([self.eos_token] if self.eos_token is not None else []) + list(
            self.extra_eos_tokens
        )
        return tuple(dict.fromkeys(self.token_id(n) for n in names))  # type: ignore[misc]

    @property
    def pad_token_id(self) -> int | None:
        """Id of the padding token, or None."""
        return self.token_id(self.pad_token) if self.pad_token is not None else None

    # -- encoding -------------------------------------------------------------------------

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = "all",
        disallowed_special: Literal["all"] | Collection[str] = (),
        add_bos: bool = False,
        strict: bool = False,
    ) -> list[int]:
        """Token ids of `text`.

        Special tokens in `allowed_special` (default: all, as HF tokenizers does) become their
        ids; those in `disallowed_special` ("all": every special token not allowed) raise; any
        other special token text is encoded as ordinary text. `add_bos` prepends the bos id.
        Text that the vocabulary cannot spell (a byte with no byte token, a character with
        neither a token, byte tokens nor an unk token) is dropped as HF tokenizers drops it,
        with a `TokenizerWarning` the first time; `strict=True` raises instead.

        Raises DisallowedSpecialTokenError when text contains a disallowed special token, and
        TokenizerError for `add_bos` without a bos token or, under `strict`, for text that
        would be dropped.
        """
        ids: list[int] = []
        if add_bos:
            if self.bos_token_id is None:
                raise TokenizerError("add_bos=True but this tokenizer has no bos token")
            ids.append(self.bos_token_id)
        if allowed_special == "all":
            allowed = set(self.special_tokens)
            special_regex = self._special_regex
        else:
            allowed = set(allowed_special)
            unknown = allowed - self.special_tokens.keys()
            if unknown:
                raise TokenizerError(
                    f"allowed_special names unknown special tokens {sorted(unknown)}"
                )
            key = frozenset(allowed)
            if key not in self._allowed_regexes:
                self._allowed_regexes[key] = self._compile_special_regex(key)
            special_regex = self._allowed_regexes[key]
        disallowed = (
            set(self.special_tokens) - allowed
            if disallowed_special == "all"
            else set(disallowed_special) - allowed
        )
        if disallowed:
            found = regex.search("|".join(map(regex.escape, disallowed)), text)
            if found:
                raise DisallowedSpecialTokenError(
                    f"text contains the disallowed special token {found.group()!r} at character {found.start()}; "
                    "pass allowed_special to encode it as a token or disallowed_special=() to encode it as text"
                )
        if special_regex is None:
            ids += self._encode_segment(text, at_start=True, strict=strict)
            return ids
        pattern, alternatives = special_regex
        start = 0
        for match in pattern.finditer(text):
            if match.start() > start:
                ids += self._encode_segment(
                    text[start : match.start()], at_start=start == 0, strict=strict
                )
            ids.append(self.special_tokens[alternatives[match.lastindex - 1]])
            start = match.end()
        if start < len(text):
            ids += self._encode_segment(text[start:], at_start=start == 0, strict=strict)
        return ids

    def encode_ordinary(self, text: str, *, strict: bool = False) -> list[int]:
        """Token ids of `text`, with special token text encoded as ordinary text (`strict`: as
        in `encode`)."""
        return self._encode_segment(text, at_start=True, strict=strict)

    def encode_batch(self, texts: Iterable[str], **kwargs: Any) -> list[list[int]]:
        """`encode` each text (same keyword arguments), sharing the word cache."""
        return [self.encode(text, **kwargs) for text in texts]

    def _encode_segment(self, text: str, *, at_start: bool, strict: bool) -> list[int]:
        """Ids of text that holds no special token (`at_start`: it begins the whole input)."""
        if not text:
            return []
        if self.normalization is not None:
            text = unicodedata.normalize(self.normalization, text)
        if self.kind == "byte_level":
            if self.add_prefix_space and not text.startswith(" "):
                text = " " + text
            words = self._split(text) if self._split is not None else [text]
        else:
            text = text.replace(" ", SPACE_MARKER)
            scheme = self.prepend_scheme
            if scheme == "legacy" or (
                (scheme == "always" or (scheme == "first" and at_start))
                and not text.startswith(SPACE_MARKER)
            ):
                text = SPACE_MARKER + text
            words = _SPACE_SPLIT.findall(text) if self.split_on_space else [text]
        try:
            return list(itertools.chain.from_iterable(map(self._word_ids.__getitem__, words)))
        except _LostBytes:
            return self._encode_lossy(words, strict=strict)

    def _encode_lossy(self, words: list[str], *, strict: bool) -> list[int]:
        """`_encode_segment`'s slow path once some word loses bytes: raise or warn, then drop."""
        ids: list[int] = []
        for word in words:
            try:
                ids += self._word_ids[word]
            except _LostBytes as lost:
                shown = ", ".join(f"0x{b:02X}" for b in dict.fromkeys(lost.lost))
                if strict:
                    raise TokenizerError(
                        f"the vocabulary has no token for byte(s) {shown} (in {word!r}); "
                        "encode without strict=True to drop them as HF tokenizers does"
                    ) from None
                if not self._warned_lost:
                    self._warned_lost = True
                    missing = ", ".join(f"0x{b:02X}" for b in self.missing_bytes)
                    warnings.warn(
                        f"the vocabulary has no token for byte(s) {shown} (in {word!r}), dropped "
                        "as HF tokenizers and llama.cpp drop them"
                        + (f"; it lacks the bytes {missing}" if missing else "")
                        + "; pass strict=True to raise instead (warned once)",
                        TokenizerWarning,
                        stacklevel=4,
                    )
                ids += lost.ids
        return ids

    def _encode_byte_level_word(self, word: str) -> tuple[int, ...]:
        data = word.encode()
        if self.ignore_merges:
            whole = self.token_to_id.get("".join(map(bytes_to_unicode().__getitem__, data)))
            if whole is not None:
                return (whole,)
        if self.missing_bytes:
            kept = data.translate(None, self.missing_bytes)
            if len(kept) != len(data):  # HF leaves the byte out of the word, then merges
                ids = merge_word(list(map(self._byte_ids.__getitem__, kept)), self.merges)
                lost = bytes(b for b in data if b in self.missing_bytes)
                raise _LostBytes(tuple(ids), lost)
        return tuple(merge_word(list(map(self._byte_ids.__getitem__, data)), self.merges))

    def _encode_sentencepiece_word(self, word: str) -> tuple[int, ...]:
        if self.ignore_merges and word in self.token_to_id:
            return (self.token_to_id[word],)
        symbols: list[int] = []
        lost: list[str] = []
        last_was_unk = False
        for char in word:
            token_id = self.token_to_id.get(char)
            if token_id is not None:
                symbols.append(token_id)
                last_was_unk = False
                continue
            if self.byte_fallback:
                byte_ids = [self._byte_ids[b] for b in char.encode()]
                if min(byte_ids) >= 0:
                    symbols += byte_ids
                    last_was_unk = False
                    continue
            if self._unk_id is None:
                lost.append(char)
            elif not last_was_unk:
                symbols.append(self._unk_id)
                last_was_unk = True
        ids = tuple(merge_word(symbols, self.merges))
        if lost:
            raise _LostBytes(ids, "".join(lost).encode())
        return ids

    def _compile_special_regex(
        self, tokens: Collection[str]
    ) -> tuple[regex.Pattern[str], list[str]] | None:
        """An alternation of `tokens`, longest first so the longest match wins, and the tokens in
        its order: alternative k has one group, so `match.lastindex - 1` says which token matched.
        lstrip / rstrip tokens take the whitespace beside them into their match."""
        if not tokens:
            return None
        ordered = sorted(tokens, key=len, reverse=True)
        alternatives = (
            (r"\s*" if t in self.lstrip_tokens else "")
            + f"({regex.escape(t)})"
            + (r"\s*" if t in self.rstrip_tokens else "")
            for t in ordered
        )
        return regex.compile("|".join(alternatives)), ordered

    # -- decoding -------------------------------------------------------------------------

    def decode(
        self, ids: Iterable[int], *, skip_special_tokens: bool = False, errors: str = "replace"
    ) -> str:
        """Text of `ids`; incomplete or invalid UTF-8 becomes U+FFFD under `errors="replace"`.

        Raises TokenizerError when an id is outside [0, vocab_size).
        """
        return self.decode_bytes(ids, skip_special_tokens=skip_special_tokens).decode(
            "utf-8", errors
        )

    def decode_bytes(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> bytes:
        """The bytes that `ids` spell (SentencePiece's leading prefix space removed).

        Raises TokenizerError when an id is outside [0, vocab_size).
        """
        data = self.token_bytes_of(ids, skip_special_tokens=skip_special_tokens)
        if self.strips_leading_space and data.startswith(b" "):
            data = data[1:]
        return data

    def token_bytes_of(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> bytes:
        """The concatenated bytes of the tokens `ids`, nothing stripped.

        Raises TokenizerError when an id is outside [0, vocab_size).
        """
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self.tokens)):
            bad = next(i for i in ids if not 0 <= i < len(self.tokens))
            raise TokenizerError(
                f"token id {bad} is outside the vocabulary [0, {len(self.tokens)})"
            )
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._skipped_ids]
        return b"".join(map(self.token_bytes.__getitem__, ids))

    @property
    def strips_leading_space(self) -> bool:
        """Whether decoding drops one leading space (the "▁" that encoding prepends)."""
        return self.kind == "sentencepiece" and self.prepend_scheme != "never"

    def decode_stream(self, *, skip_special_tokens: bool = False) -> IncrementalDecoder:
        """A decoder to feed ids one batch at a time; it returns only complete UTF-8 text."""
        from llm_tokenizer.streaming import IncrementalDecoder

        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    def _bytes_of(self, token_id: int, token: str) -> bytes:
        if self.kind == "sentencepiece":
            byte = _BYTE_TOKEN.fullmatch(token)
            if byte:  # also when the byte tokens are registered as added tokens
                return bytes([int(byte.group(1), 16)])
        if token_id in self._special_ids:
            return token.encode()
        if self.kind == "byte_level":
            decoder = unicode_to_bytes()
            if all(c in decoder for c in token):
                return bytes(decoder[c] for c in token)
            return token.encode()
        byte = _BYTE_TOKEN.fullmatch(token)
        if byte:
            return bytes([int(byte.group(1), 16)])
        return token.replace(SPACE_MARKER, " ").encode()

    # -- chat -----------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str:
        """Render `messages` with this tokenizer's chat template (ChatML when it has none).

        HF semantics: the template sees `messages`, `add_generation_prompt`, `bos_token`,
        `eos_token` and any extra keyword arguments. Raises TokenizerError when the template
        fails to render or calls `raise_exception`.
        """
        return self.render_chat(messages, add_generation_prompt=add_generation_prompt, **kwargs)[0]

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> tuple[str, list[tuple[int, int]]]:
        """`apply_chat_template`'s text and the [start, end) character spans that the
        template's `{% generation %}` blocks wrote (the assistant's part, as HF marks it).

        Raises TokenizerError as `apply_chat_template` does.
        """
        return render_chat_template_with_spans(
            self.chat_template or DEFAULT_CHAT_TEMPLATE,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> tuple[list[int], list[int]]:
        """Token ids of the rendered chat and its assistant mask: 1 for each token that overlaps a
        `{% generation %}` span, else 0, as HF's `apply_chat_template(tokenize=True,
        return_assistant_tokens_mask=True)` gives them (for loss masks in training).

        Raises TokenizerError as `apply_chat_template` does, and when the tokens do not spell
        the text byte for byte (normalization, SentencePiece spaces, dropped bytes), so that
        character spans cannot be mapped to tokens.
        """
        text, spans = self.render_chat(
            messages, add_generation_prompt=add_generation_prompt, **kwargs
        )
        ids = self.encode(text)
        mask = [0] * len(ids)
        if not spans:
            return ids, mask
        data = text.encode()
        if self.token_bytes_of(ids) != data:
            raise TokenizerError(
                "assistant masks need tokens that spell the rendered text byte for byte; "
                "this tokenizer normalizes or rewrites it"
            )
        starts = list(itertools.accumulate((len(self.token_bytes[i]) for i in ids), initial=0))
        for start, end in spans:
            if end <= start:
                continue
            first = bisect.bisect_right(starts, len(text[:start].encode())) - 1
            last = bisect.bisect_right(starts, len(text[: end - 1].encode())) - 1
            mask[first : last + 1] = [1] * (last + 1 - first)
        return ids, mask

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, special_tokens={len(self.special_tokens)})"
