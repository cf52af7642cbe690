"""Data preparation: text, JSON, JSONL and CSV files into token shards with a JSON index.

A prepared directory holds ``index.json``, ``tokenizer.json`` and, per split (``train``,
``val``), flat ``<split>-NNNNN.bin`` token shards (uint16 when the vocabulary fits, uint32
otherwise). Chat documents carry a loss mask, stored beside each shard as
``<split>-NNNNN.mask.bin`` (uint8, 1 = a token the model learns to predict): only the assistant's
turns are learned. Documents are separated by the tokenizer's end-of-text token.

Accepted inputs (by suffix; anything else is read as plain text, one document per file):

- ``.txt``/``.md``/``.rst``/...: the whole file is one document.
- ``.json``: a list of strings, or a list of ``{"messages": [...]}`` / ``{"text": ...}`` objects.
- ``.jsonl``: one string or object per line, as in a JSON list.
- ``.csv``: header-less; the first column is the document.

A string of the form ``"User: ... Assistant: ..."`` is read as a conversation.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from llm_tokenizer import Tokenizer, TokenizerError

from llm_train.errors import DataError

INDEX_NAME = "index.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "llm-train-shards"
FORMAT_VERSION = 1
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_TURN = re.compile(r"(?:^|\s)(User|Assistant|System):\s*", re.IGNORECASE)


@dataclass
class Document:
    """One document: plain ``text``, or a conversation as chat ``messages``."""

    source: str  # "file:line" for error messages
    text: str | None = None
    messages: list[dict[str, str]] | None = None


@dataclass
class ReadReport:
    """What reading the inputs skipped, with the reason and place of each skip."""

    documents: int = 0
    skipped: list[str] = field(default_factory=list)


def read_documents(paths: Sequence[str | Path], report: ReadReport) -> Iterator[Document]:
    """Yield every document of ``paths``; unusable records are counted in ``report.skipped``.

    Raises :class:`DataError` naming the file (and line) when a file is missing, is not UTF-8,
    or a ``.json`` file is not valid JSON as a whole. An empty file, an empty record, an
    invalid JSONL line or a record of an unknown shape is a counted skip.
    """
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            data = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[: exc.start].count(b"\n") + 1
            raise DataError(
                f"{path}:{line}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
            ) from None
        if not data.strip():
            report.skipped.append(f"{path}: empty file")
            continue
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            records = _jsonl_records(path, data, report)
        elif suffix == ".json":
            try:
                items = json.loads(data)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(items, list):
                raise DataError(f"{path}: expected a JSON list of strings or objects")
            records = ((f"{path}[{i}]", item) for i, item in enumerate(items))
        elif suffix == ".csv":
            records = _csv_records(path, data)
        else:
            records = iter([(str(path), data)])
        for source, record in records:
            doc = _document(source, record)
            if doc is None:
                report.skipped.append(f"{source}: empty or unrecognized record")
                continue
            report.documents += 1
            yield doc


def _jsonl_records(path: Path, data: str, report: ReadReport) -> Iterator[tuple[str, Any]]:
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as exc:
            report.skipped.append(f"{path}:{n}: invalid JSON ({exc.msg})")


def _csv_records(path: Path, data: str) -> Iterator[tuple[str, Any]]:
    reader = csv.reader(io.StringIO(data))
    try:
        for row in reader:
            if row:
                yield f"{path}:{reader.line_num}", row[0]
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None


def _document(source: str, record: Any) -> Document | None:
    """A record as a Document: a string, ``{"text": ...}`` or ``{"messages": [...]}``."""
    if isinstance(record, Mapping):
        if "messages" in record:
            return _chat_document(source, record["messages"])
        record = record.get("text")
    if not isinstance(record, str) or not record.strip():
        return None
    turns = _TURN.split(record.strip())
    if len(turns) >= 5 and not turns[0].strip():  # "", role, text, role, text, ...
        messages = [
            {"role": role.lower(), "content": text.strip()}
            for role, text in zip(turns[1::2], turns[2::2], strict=True)
        ]
        if any(m["role"] == "assistant" for m in messages):
            return Document(source, messages=messages)
    return Document(source, text=record)


def _chat_document(source: str, messages: Any) -> Document | None:
    if not isinstance(messages, list) or not messages:
        return None
    clean = []
    for m in messages:
        if not (isinstance(m, Mapping) and isinstance(m.get("content"), str) and m.get("role")):
            return None
        clean.append({"role": str(m["role"]), "content": m["content"]})
    return Document(source, messages=clean)


# -- tokenization ---------------------------------------------------------------------------


def encode_document(tokenizer: Tokenizer, doc: Document) -> tuple[list[int], list[int] | None]:
    """Token ids of ``doc`` and, for a conversation, its loss mask (1 on assistant turns).

    A conversation is rendered with the tokenizer's chat template one message at a time; an
    assistant turn's header (``<|im_start|>assistant\\n`` in ChatML) is not learned, its
    content and end-of-turn token are. Raises :class:`DataError` when the template does not
    render conversations prefix by prefix.
    """
    if doc.messages is None:
        return tokenizer.encode_ordinary(doc.text or ""), None
    ids: list[int] = []
    mask: list[int] = []
    try:
        done = ""
        for i, message in enumerate(doc.messages):
            if message["role"] == "assistant":
                header = tokenizer.apply_chat_template(doc.messages[:i], add_generation_prompt=True)
                _extend(tokenizer, ids, mask, _suffix(doc, done, header), 0)
                done = header
            text = tokenizer.apply_chat_template(doc.messages[: i + 1])
            _extend(tokenizer, ids, mask, _suffix(doc, done, text), message["role"] == "assistant")
            done = text
    except TokenizerError as exc:
        raise DataError(f"{doc.source}: cannot render the conversation: {exc}") from None
    return ids, mask


def _suffix(doc: Document, prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise DataError(
            f"{doc.source}: the chat template does not render conversations prefix by prefix"
        )
    return text[len(prefix) :]


def _extend(tokenizer: Tokenizer, ids: list[int], mask: list[int], text: str, learn: int) -> None:
    new = tokenizer.encode(text)
    ids += new
    mask += [int(learn)] * len(new)


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The id that separates documents: ``<|endoftext|>`` if present, else the eos token."""
    eot = tokenizer.token_id("<|endoftext|>")
    if eot is not None:
        return eot
    return tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None


def train_tokenizer(paths: Sequence[str | Path], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on the documents of ``paths``, with ChatML specials.

    ``<|endoftext|>`` is its eos token and ``<|im_end|>`` ends generation as well. Raises
    :class:`DataError` as :func:`read_documents` does, or when ``vocab_size`` is too small.
    """
    texts = []
    for doc in read_documents(paths, ReadReport()):
        if doc.text is not None:
            texts.append(doc.text)
        else:
            texts.extend(m["content"] for m in doc.messages or [])
    try:
        tokenizer = Tokenizer.train(
            texts, vocab_size, special_tokens=CHAT_SPECIAL_TOKENS, eos_token="<|endoftext|>"
        )
    except TokenizerError as exc:
        raise DataError(f"cannot train the tokenizer: {exc}") from None
    tokenizer.extra_eos_tokens = ("<|im_end|>",)
    return tokenizer


# -- shards ---------------------------------------------------------------------------------


@dataclass
class PrepareResult:
    """Counts of a :func:`prepare` run."""

    out_dir: Path
    documents: dict[str, int]
    tokens: dict[str, int]
    skipped: list[str]
    has_mask: bool


def prepare(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: Tokenizer,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    shard_tokens: int = 1 << 26,
) -> PrepareResult:
    """Tokenize ``paths`` into shards under ``out_dir`` with a train/validation split.

    Documents go to ``val`` at random (seeded) until it holds ``val_fraction`` of the tokens;
    a single document is split by tokens instead. Raises :class:`DataError` when no usable
    document is found, or as :func:`read_documents` does.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out_dir)
    report = ReadReport()
    eot = end_of_text_id(tokenizer)
    docs: list[tuple[np.ndarray, np.ndarray | None]] = []
    for doc in read_documents(paths, report):
        ids, mask = encode_document(tokenizer, doc)
        if not ids:
            continue
        if eot is not None:
            ids.append(eot)
            if mask is not None:
                mask.append(0)
        docs.append(
            (np.asarray(ids, np.int64), None if mask is None else np.asarray(mask, np.uint8))
        )
    if not docs:
        names = ", ".join(str(p) for p in paths)
        raise DataError(f"no usable documents in {names} ({len(report.skipped)} skipped)")
    has_mask = any(m is not None for _, m in docs)
    docs = [(ids, np.ones(len(ids), np.uint8) if m is None and has_mask else m) for ids, m in docs]
    train, val = _split(docs, val_fraction, seed)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        name: _write_split(out, name, part, dtype, shard_tokens)
        for name, part in (("train", train), ("val", val))
    }
    tokenizer.save(out / TOKENIZER_NAME)
    index = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": np.dtype(dtype).name,
        "vocab_size": tokenizer.vocab_size,
        "end_of_text_id": eot,
        "has_mask": has_mask,
        "tokenizer": TOKENIZER_NAME,
        "splits": splits,
        "skipped": report.skipped,
    }
    (out / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return PrepareResult(
        out,
        {k: v["documents"] for k, v in splits.items()},
        {k: v["tokens"] for k, v in splits.items()},
        report.skipped,
        has_mask,
    )


Doc = tuple[np.ndarray, "np.ndarray | None"]


def _split(docs: list[Doc], val_fraction: float, seed: int) -> tuple[list[Doc], list[Doc]]:
    """Whole documents (in seeded random order) to ``val`` while they fit in its share of the
    tokens; when none fits, the largest document is cut in two instead."""
    if val_fraction == 0.0:
        return docs, []
    want = max(int(sum(len(ids) for ids, _ in docs) * val_fraction), 1)
    val_ids, got = set(), 0
    for i in np.random.default_rng(seed).permutation(len(docs)):
        if got + len(docs[i][0]) <= want:
            val_ids.add(int(i))
            got += len(docs[i][0])
    if val_ids and len(val_ids) < len(docs):
        train = [d for i, d in enumerate(docs) if i not in val_ids]
        return train, [d for i, d in enumerate(docs) if i in val_ids]
    j = max(range(len(docs)), key=lambda i: len(docs[i][0]))
    ids, mask = docs[j]
    cut = len(ids) - want
    head = (ids[:cut], None if mask is None else mask[:cut])
    tail = (ids[cut:], None if mask is None else mask[cut:])
    return [*docs[:j], head, *docs[j + 1 :]], [tail]


def _write_split(
    out: Path, name: str, docs: list[Doc], dtype: type, shard_tokens: int
) -> dict[str, Any]:
    for old in out.glob(f"{name}-*.bin"):
        old.unlink()
    shards: list[dict[str, Any]] = []
    if docs:
        ids = np.concatenate([d[0] for d in docs]).astype(dtype)
        masks = None if docs[0][1] is None else np.concatenate([d[1] for d in docs])
        for i, start in enumerate(range(0, len(ids), shard_tokens)):
            entry = {"tokens": f"{name}-{i:05d}.bin"}
            ids[start : start + shard_tokens].tofile(out / entry["tokens"])
            if masks is not None:
                entry["mask"] = f"{name}-{i:05d}.mask.bin"
                masks[start : start + shard_tokens].tofile(out / entry["mask"])
            entry["num_tokens"] = int(min(shard_tokens, len(ids) - start))
            shards.append(entry)
    return {
        "documents": len(docs),
        "tokens": sum(s["num_tokens"] for s in shards),
        "shards": shards,
    }
