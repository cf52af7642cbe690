"""The demo model's data: text every Python installation has, and questions made from it.

- Text: the docstrings of the standard library (read with :mod:`ast`, nothing is imported),
  one document per module, each docstring under the name it documents.
- Instructions: for each documented public module, class and function, questions such as
  "What does json.dumps do?" answered with the name and the first sentence of its docstring.

``python -m llm_train.demo corpus OUT_DIR`` writes ``stdlib.jsonl`` and ``instructions.jsonl``;
``python -m llm_train.demo card ...`` copies a trained checkpoint into place with its model card
(held-out perplexity beside a unigram baseline, and sample answers). ``make demo-model`` runs
the whole recipe.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import re
import shutil
import sysconfig
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from llm_core import Transformer, load_model
from llm_infer import LLM
from llm_tokenizer import Tokenizer

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
QUESTIONS = {
    "function": ("What does {name} do?", "What is {name} for?", "Explain {name}."),
    "class": ("What is {name}?", "What does the {name} class do?", "Explain {name}."),
    "module": ("What is the {name} module for?", "What does the {name} module do?"),
}
_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files (tests, IDLE and site-packages left out), sorted."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in root.rglob("*.py") if not SKIP_PARTS.intersection(p.relative_to(root).parts)
    )


def module_name(path: Path, root: Path) -> str:
    """``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def docstrings(path: Path, module: str) -> Iterator[tuple[str, str, str]]:
    """``(kind, qualified name, docstring)`` of a file's module, public classes and functions.

    Files that do not parse (or are not UTF-8) yield nothing.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    doc = ast.get_docstring(tree)
    if doc:
        yield "module", module, doc
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name.startswith("_"):
                continue
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            doc = ast.get_docstring(node)
            if doc:
                yield kind, f"{module}.{node.name}", doc
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        doc = ast.get_docstring(item)
                        if doc:
                            yield "function", f"{module}.{node.name}.{item.name}", doc


def first_sentence(doc: str) -> str | None:
    """The docstring's first sentence on one line, or None when it is not plain prose."""
    paragraph = doc.strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    match = _SENTENCE.match(text)
    sentence = match.group(1) if match else text
    if not 20 <= len(sentence) <= 200 or not sentence[0].isupper() or "(" in sentence[:8]:
        return None
    return sentence


def build(out_dir: str | Path, *, root: Path | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Write ``stdlib.jsonl`` (text) and ``instructions.jsonl`` (chat) under ``out_dir``."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts, chats = [], []
    for path in stdlib_files(root):
        module = module_name(path, root)
        parts = []
        for kind, name, doc in docstrings(path, module):
            parts.append(f"{name}\n\n{doc.strip()}")
            sentence = first_sentence(doc)
            if sentence is None:
                continue
            subject = f"The {name} module" if kind == "module" else name
            answer = f"{subject}: {sentence}"
            for template in QUESTIONS[kind]:
                question = template.format(name=name)
                chats.append(
                    {
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ]
                    }
                )
        if parts:
            texts.append("\n\n".join(parts))
    text_path, chat_path = out / "stdlib.jsonl", out / "instructions.jsonl"
    with open(text_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    rng.shuffle(chats)
    with open(chat_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(c) + "\n" for c in chats)
    return text_path, chat_path


SAMPLE_QUESTIONS = (
    "What does json.dumps do?",
    "What is the os.path module for?",
    "What does shutil.copyfile do?",
    "What is collections.OrderedDict?",
    "Explain random.shuffle.",
)
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def answer(
    model: Transformer, tokenizer: Tokenizer, question: str, max_new_tokens: int = 60
) -> str:
    """The model's greedy answer to ``question``, rendered with the chat template (through
    llm-infer's generation core, as ``llm-infer`` and ``make chat`` run it)."""
    llm = LLM(model, tokenizer, compile=False)
    messages = [{"role": "user", "content": question}]
    return llm.chat(messages, temperature=0, max_tokens=max_new_tokens).text.strip()


def write_card(
    run_dir: Path, data_dir: Path, dest: Path, *, seconds: float, questions: Sequence[str]
) -> str:
    """Copy the run's latest checkpoint to ``dest`` with a ``MODEL_CARD.md``; returns the card."""
    from llm_train.checkpoint import latest_checkpoint, load_trainer_state
    from llm_train.errors import TrainError
    from llm_train.evaluate import unigram_loss, validation_loss
    from llm_train.loader import BatchLoader, TokenShards

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise TrainError(f"{run_dir}: no checkpoint to publish")
    model = load_model(checkpoint)
    tokenizer = Tokenizer.from_file(checkpoint / "tokenizer.json")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run = load_trainer_state(checkpoint)["run_config"]
    val = TokenShards(data_dir, "val")
    seq_len = run["seq_len"]
    loss = validation_loss(model, BatchLoader(val, seq_len, 1, 0), 10_000, 8)
    unigram = unigram_loss(TokenShards(data_dir, "train"), val, model.config.vocab_size)
    index = json.loads((data_dir / "index.json").read_text())
    cfg = model.config
    steps = metrics[-1]["step"]
    cut = (
        ""
        if steps == run["max_steps"]
        else f"; max_minutes stopped it before step {run['max_steps']}"
    )
    samples = "\n".join(f"- **{q}**\n  {answer(model, tokenizer, q)}" for q in questions)
    card = f"""# The llm demo model

A {model.num_parameters() / 1e6:.1f}M-parameter GPT-style model ({cfg.n_layer} layers of {cfg.n_embd}, {cfg.n_head} heads,
GeLU MLP, RMSNorm, RoPE, tied embeddings, byte-level BPE of {tokenizer.vocab_size} tokens) trained
at context {seq_len} by `make demo-model` on text every Python installation has: the docstrings
of the Python standard library and a generated instruction set ("What does json.dumps do?"
answered with the name and the first sentence of its docstring; only the answers are
learned): {index["splits"]["train"]["documents"]} training documents in all.

- Training: {steps} steps of {run["batch_size"]} x {seq_len} tokens ({steps * run["batch_size"] * seq_len / 1e6:.2f}M tokens{cut}),
  AdamW lr {run["lr"]} cosine to {run["min_lr_ratio"]} x, {seconds / 60:.1f} minutes in all (data, tokenizer,
  training, this card) on a 2-core x86_64 VM (shared), {time.strftime("%Y-%m-%d")}.
- Held-out perplexity (the validation split: {val.num_tokens} tokens of docstrings and
  answers the model never saw): **{math.exp(loss):.1f}**, against **{math.exp(unigram):.1f}** for a unigram
  model of the training tokens (add-one smoothed), over the same learned tokens.
- Long contexts: see docs/long-context.md (perplexity up to 4096 positions with plain RoPE,
  NTK scaling and the sink cache).

It is a toy: it knows the shape of the standard library's documentation, not Python.

## Sample answers (greedy)

{samples}
"""
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(checkpoint / name, dest / name)
    (dest / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("corpus", help="write stdlib.jsonl and instructions.jsonl")
    p.add_argument("out_dir", type=Path, help="where to write the two JSONL files")
    p.add_argument("--seed", type=int, default=0, help="seed of the order of the questions")
    p = sub.add_parser("card", help="publish a run's latest checkpoint with its model card")
    p.add_argument("run_dir", type=Path, help="the run's out_dir")
    p.add_argument("--data", type=Path, required=True, help="the prepared data directory")
    p.add_argument("--dest", type=Path, required=True, help="where the model goes")
    p.add_argument("--started", type=float, help="Unix time the recipe started (for the card)")
    args = parser.parse_args(argv)
    if args.command == "card":
        seconds = time.time() - args.started if args.started else 0.0
        print(
            write_card(
                args.run_dir, args.data, args.dest, seconds=seconds, questions=SAMPLE_QUESTIONS
            )
        )
        return 0
    text_path, chat_path = build(args.out_dir, seed=args.seed)
    for path in (text_path, chat_path):
        lines = path.read_text(encoding="utf-8").count("\n")
        print(f"{path}: {lines} records, {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
