"""Shared fixtures: a small trained tokenizer, tiny random HF checkpoints, a scripted model."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch
from llm_infer import LLM
from llm_tokenizer import Tokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_HF = dict(
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,  # larger than HF's default: peaked logits, so argmax ties are unlikely
)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A byte-level BPE of 400 ids trained on a little stdlib text, eos ``<|im_end|>``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    text = (root / "textwrap.py").read_text() + "héllo wörld — naïve 日本語のテキスト 🙂 Привет мир"
    tok = Tokenizer.train([text], 400, special_tokens=SPECIAL, eos_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def save_hf_dir(path: Path, family: str, tokenizer: Tokenizer, seed: int = 0) -> Path:
    """Write a random-init HF ``family`` ("llama" or "qwen2") model with ``tokenizer`` to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, config_cls = {
        "llama": (LlamaForCausalLM, LlamaConfig),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config),
    }[family]
    config = config_cls(
        **TINY_HF,
        vocab_size=tokenizer.vocab_size,
        tie_word_embeddings=family == "qwen2",
        eos_token_id=tokenizer.eos_token_ids[0],
    )
    torch.manual_seed(seed)
    cls(config).eval().save_pretrained(path)
    tokenizer.save(path / "tokenizer.json", format="hf")
    tok_config = {"eos_token": "<|im_end|>", "chat_template": CHATML}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return path


@pytest.fixture
def make_hf_dir(tmp_path, tokenizer):
    """``make_hf_dir(family, seed=0)``: a random-init HF checkpoint directory (see save_hf_dir)."""
    return lambda family, seed=0: save_hf_dir(tmp_path / family, family, tokenizer, seed)


def hf_greedy_tokens(path: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """The ``new_tokens`` tokens HF ``generate(do_sample=False)`` picks after ``prompt``: the
    reference for greedy parity."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )  # (1, T + new_tokens)
    return out[0, len(prompt) :].tolist()


@pytest.fixture
def hf_greedy():
    """``hf_greedy(path, prompt, new_tokens)``: see :func:`hf_greedy_tokens`."""
    return hf_greedy_tokens


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    return save_hf_dir(tmp_path_factory.mktemp("llama"), "llama", tokenizer)


@pytest.fixture(scope="session")
def llm(llama_dir) -> LLM:
    from llm_infer import load

    return load(llama_dir)


class ScriptedConfig:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.max_seq_len = 512
        self.n_layer = 1
        self.kv_heads = 1
        self.head_dim = 2


class ScriptedLM:
    """A fake model whose greedy output after the prompt is ``script``, token by token.

    The logit of the scripted token is 10, the others 0, at position ``prompt_len + i - 1``.
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, vocab_size: int, prompt_len: int, script: list[int]) -> None:
        self.config = ScriptedConfig(vocab_size)
        self.prompt_len = prompt_len
        self.script = script

    def new_cache(self, batch_size, capacity=None, kind="static"):
        return None

    def forward(self, tokens, cache=None, positions=None, *, logits_to_keep=0):
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b in range(B):
            for t in range(T):
                i = int(positions[b, t]) - self.prompt_len + 1
                logits[b, t, self.script[min(max(i, 0), len(self.script) - 1)]] = 10.0
        return logits[:, -logits_to_keep:] if logits_to_keep else logits


@pytest.fixture
def scripted(tokenizer):
    """``scripted(text)``: an LLM whose greedy output after a 1-token prompt spells ``text``."""

    def make(text: str) -> tuple[LLM, list[int]]:
        script = tokenizer.encode(text)
        return LLM(ScriptedLM(tokenizer.vocab_size, 1, script), tokenizer), script

    return make
