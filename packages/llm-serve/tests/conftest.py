"""Fixtures: a tiny random model with a small trained tokenizer, served in-process by uvicorn.

The tokenizer has two extra added tokens whose text is a whole tool call (and the tail of a
named one), so a ``logit_bias`` on them makes even a random model call a tool, deterministically,
through the real engine.
"""

from __future__ import annotations

import json
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from llm_core import ModelConfig, Transformer, save_model
from llm_infer import LLM, load
from llm_serve import ServerConfig, ServerThread, create_app
from llm_tokenizer import Tokenizer

MODEL = "tiny"
TOOL_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
NAMED_TAIL = '{"city": "Paris"}}\n</tool_call>'  # completes reply_prefix(named get_weather)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A random 2-layer model (context 1024) and a 400-id BPE, eos ``<|im_end|>``, ChatML."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trained = Tokenizer.train([text], 400, special_tokens=special, eos_token="<|im_end|>")
    hf = json.loads(trained.to_hf_json())
    for offset, content in enumerate((TOOL_CALL, NAMED_TAIL)):
        hf["added_tokens"].append(
            {
                "id": trained.vocab_size + offset,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
        )
    tokenizer = Tokenizer.from_hf_json(json.dumps(hf))
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        max_seq_len=1024,
        mlp="swiglu",
        init_std=0.2,  # peaked logits: greedy argmax ties are unlikely
    )
    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    torch.manual_seed(0)
    save_model(Transformer(config), path, tokenizer_json=tokenizer.to_hf_json())
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return path


@pytest.fixture(scope="session")
def model() -> str:
    """The name the server serves the tiny model under."""
    return MODEL


@pytest.fixture(scope="session")
def weather_tool() -> dict:
    return WEATHER_TOOL


@pytest.fixture(scope="session")
def llm(checkpoint) -> LLM:
    return load(checkpoint)


@pytest.fixture(scope="session")
def ids(llm) -> dict[str, int]:
    """Token ids the tests steer with: eos, the whole tool call, the named call's tail."""
    tok = llm.tokenizer
    return {
        "eos": tok.eos_token_ids[0],
        "tool_call": tok.encode(TOOL_CALL)[0],
        "named_tail": tok.encode(NAMED_TAIL)[0],
    }


def serve(llm: LLM, **options) -> ServerThread:
    """A server for ``llm`` on a free loopback port (enter it with ``with``)."""
    return ServerThread(create_app(llm, ServerConfig(model_name=MODEL, **options)))


@pytest.fixture(scope="session")
def server(llm) -> Iterator[ServerThread]:
    with serve(llm, max_tokens_cap=128) as running:
        yield running


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    """The official OpenAI client, pointed at the in-process server."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


class GatedModel:
    """A model whose every forward waits for ``gate`` and then sleeps ``delay`` seconds.

    Lets a test hold the engine mid-step (to fill its queue) or slow it down (to count the
    steps a cancellation takes). Everything else is the wrapped model's.
    """

    def __init__(self, model, delay: float = 0.0) -> None:
        self.model = model
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def forward(self, tokens, cache=None, positions=None, *, logits_to_keep=0):
        self.gate.wait(timeout=20)
        time.sleep(self.delay)
        return self.model.forward(tokens, cache, positions, logits_to_keep=logits_to_keep)


@pytest.fixture
def gated(llm):
    """``gated(delay=0.0, **server_options) -> (GatedModel, ServerThread)`` on the tiny model."""

    def make(delay: float = 0.0, **options):
        model = GatedModel(llm.model, delay)
        return model, serve(LLM(model, llm.tokenizer), **options)

    return make


@pytest.fixture
def make_server(llm):
    """``make_server(**server_options)``: another server on the tiny model (enter it with ``with``)."""
    return lambda **options: serve(llm, **options)


@pytest.fixture(scope="module")
def make_server_module(llm):
    """:func:`make_server`, for module-scoped servers."""
    return lambda **options: serve(llm, **options)
