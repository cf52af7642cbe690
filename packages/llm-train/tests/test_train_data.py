"""Data preparation, the shard loader, and bad data: clear errors naming file and line, or skips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from llm_train.cli import main
from llm_train.data import (
    ReadReport,
    encode_document,
    prepare,
    read_documents,
    train_tokenizer,
)
from llm_train.errors import DataError
from llm_train.loader import IGNORE_INDEX, BatchLoader, TokenShards


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    text = root / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 50, encoding="utf-8")
    return train_tokenizer([text], 300)


def test_every_input_format_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain text file", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(["one", {"text": "two"}]), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('"three"\n{"text": "four"}\n', encoding="utf-8")
    (tmp_path / "d.csv").write_text('five,x\n"six, with a comma",y\n', encoding="utf-8")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    (tmp_path / "e.jsonl").write_text(json.dumps(chat) + "\n", encoding="utf-8")
    (tmp_path / "f.json").write_text(
        json.dumps(["User: hello Assistant: hi there"]), encoding="utf-8"
    )
    names = ["a.txt", "b.json", "c.jsonl", "d.csv", "e.jsonl", "f.json"]
    docs = list(read_documents([tmp_path / n for n in names], ReadReport()))
    texts = [d.text for d in docs if d.text is not None]
    assert texts == ["plain text file", "one", "two", "three", "four", "five", "six, with a comma"]
    chats = [d.messages for d in docs if d.messages is not None]
    assert chats[0] == chat["messages"]
    assert chats[1] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
    ]


def test_prepare_writes_shards_index_and_split(tmp_path: Path, tokenizer, corpus) -> None:
    files = corpus(tmp_path)
    result = prepare(files, tmp_path / "out", tokenizer, val_fraction=0.1, shard_tokens=5000)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["has_mask"]
    assert len(index["splits"]["train"]["shards"]) > 1  # split into shards of 5000 tokens
    total = result.tokens["train"] + result.tokens["val"]
    assert 0.05 * total < result.tokens["val"] <= 0.1 * total
    shards = TokenShards(tmp_path / "out", "train")
    assert shards.num_tokens == result.tokens["train"]
    ids = np.concatenate([np.asarray(t) for t in shards.tokens])
    assert ids.max() < tokenizer.vocab_size
    assert (ids == tokenizer.token_id("<|endoftext|>")).sum() == result.documents["train"]


def test_chat_mask_covers_only_the_assistant_turn(tokenizer) -> None:
    from llm_train.data import Document

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the fox?"},
        {"role": "assistant", "content": "the lazy dog."},
    ]
    ids, mask = encode_document(tokenizer, Document("x", messages=messages))
    assert ids == tokenizer.encode(tokenizer.apply_chat_template(messages))
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(learned) == "the lazy dog.<|im_end|>\n"


def test_loader_windows_depend_only_on_seed_and_step(prepared: Path) -> None:
    shards = TokenShards(prepared, "train")
    a = BatchLoader(shards, 16, 6, seed=3)
    b = BatchLoader(TokenShards(prepared, "train"), 16, 6, seed=3)
    assert a.windows(7) == b.windows(7)
    assert a.windows(7) != a.windows(8)
    x, y = a.batch(7, slice(0, 6))
    x2, y2 = b.batch(7, slice(2, 4))  # a process's rows are rows of the same global batch
    assert x.shape == (6, 16) and (x[2:4] == x2).all() and (y[2:4] == y2).all()
    assert (x[:, 1:] == y[:, :-1])[y[:, :-1] != IGNORE_INDEX].all()  # targets are inputs shifted
    assert a.target_count(7) == int((y != IGNORE_INDEX).sum())


# -- bad data ---------------------------------------------------------------------------------


def test_empty_files_and_invalid_json_lines_are_counted_skips(tmp_path: Path, tokenizer) -> None:
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "good.jsonl").write_text(
        '"a fine line of text"\n{broken\n\n{"text": ""}\n"another fine line"\n', encoding="utf-8"
    )
    files = [tmp_path / "empty.txt", tmp_path / "good.jsonl"]
    result = prepare(files, tmp_path / "o", tokenizer, val_fraction=0.0)
    assert result.documents == {"train": 2, "val": 0}
    assert result.skipped == [
        f"{tmp_path / 'empty.txt'}: empty file",
        f"{tmp_path / 'good.jsonl'}:2: invalid JSON (Expecting property name enclosed in double quotes)",
        f"{tmp_path / 'good.jsonl'}:4: empty or unrecognized record",
    ]


def test_non_utf8_names_file_and_line(tmp_path: Path, tokenizer) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nstill fine\nbroken \xff here\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: not UTF-8 \(byte 0xff"):
        prepare([bad], tmp_path / "o", tokenizer)


def test_invalid_json_file_names_file_and_line(tmp_path: Path, tokenizer) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[\n"ok",\n"missing quote]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json:3: not valid JSON"):
        prepare([bad], tmp_path / "o", tokenizer)


def test_only_empty_inputs_is_an_error(tmp_path: Path, tokenizer) -> None:
    (tmp_path / "e.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no usable documents in .*e\.txt \(1 skipped\)"):
        prepare([tmp_path / "e.txt"], tmp_path / "o", tokenizer)


def test_corpus_shorter_than_one_window(tmp_path: Path, tokenizer) -> None:
    (tmp_path / "short.txt").write_text("the fox", encoding="utf-8")
    prepare([tmp_path / "short.txt"], tmp_path / "o", tokenizer, val_fraction=0.0)
    with pytest.raises(
        DataError, match=r"o/train: \d+ tokens, fewer than one window of seq_len \+ 1 = 65"
    ):
        BatchLoader(TokenShards(tmp_path / "o", "train"), 64, 4, seed=0)


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xfe\xff")
    code = main(["prepare", str(bad), "--out", str(tmp_path / "o"), "--train-tokenizer"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        f"llm-train: error: {bad}:1: not UTF-8 (byte 0xfe at offset 0)"
    ]
    assert main(["pretrain", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "no such run config" in capsys.readouterr().err
    with pytest.raises(DataError):
        main(["--debug", "prepare", str(bad), "--out", str(tmp_path / "o"), "--train-tokenizer"])


def test_cli_prepare_reports_counts(tmp_path: Path, corpus, capsys) -> None:
    files = corpus(tmp_path)
    args = ["prepare", *map(str, files), "--out", str(tmp_path / "o")]
    assert main([*args, "--train-tokenizer", "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    assert "0 skipped, vocabulary 300, with loss masks" in out
    assert main([*args, "--tokenizer", str(tmp_path / "o" / "tokenizer.json")]) == 0
