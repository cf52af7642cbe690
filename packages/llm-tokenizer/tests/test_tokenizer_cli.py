"""The llm-tokenizer command: train, encode, decode, info; one-line errors and exit status 1."""

from __future__ import annotations

import json

import pytest
from llm_tokenizer import Tokenizer
from llm_tokenizer.cli import main


@pytest.fixture
def trained(tmp_path, corpus) -> str:
    text = tmp_path / "corpus.txt"
    text.write_text(corpus["train"][:100_000], encoding="utf-8")
    out = tmp_path / "tok.json"
    assert (
        main(
            [
                "train",
                str(text),
                "--vocab-size",
                "400",
                "--out",
                str(out),
                "--special",
                "<|endoftext|>",
                "--quiet",
            ]
        )
        == 0
    )
    return str(out)


def test_train_encode_decode_info(trained, capsys):
    tokenizer = Tokenizer.from_file(trained)
    assert tokenizer.vocab_size == 400 and tokenizer.eos_token == "<|endoftext|>"
    capsys.readouterr()
    assert main(["encode", "-t", trained, "--json", "--special", "def f():<|endoftext|>"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids == tokenizer.encode("def f():<|endoftext|>")
    assert main(["decode", "-t", trained, *map(str, ids)]) == 0
    assert capsys.readouterr().out == "def f():<|endoftext|>\n"
    assert main(["info", trained]) == 0
    assert "byte_level" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_1(trained, tmp_path, capsys):
    assert main(["decode", "-t", trained, "999999"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("llm-tokenizer: error:") and err.count("\n") == 1 and "Traceback" not in err
    )
    assert main(["info", str(tmp_path / "missing.json")]) == 1
    assert main(["train", trained, "--vocab-size", "10", "--out", str(tmp_path / "x.json")]) == 1
    assert "smaller than 256" in capsys.readouterr().err
    with pytest.raises(ValueError):
        main(["--debug", "decode", "-t", trained, "999999"])
