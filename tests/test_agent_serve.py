"""End to end: llm-agent against llm-serve, with OpenAI ``tool_calls`` over the wire.

A random tiny model's tokenizer has a whole tool call as one added token (and a short answer
as another), so a ``logit_bias`` on it makes the real engine call ``write_file`` and then
answer, deterministically; the server turns the call into streamed ``tool_calls``, the
agent's OpenAI model (the ``openai`` package) reads them, the workspace writes the file, and
the ``tool`` message goes back to the server for the next step.
"""

from __future__ import annotations

import asyncio
import json
import sysconfig
from pathlib import Path

import pytest
import torch
from llm_agent import Agent, OpenAIChatModel, Workspace, sandbox
from llm_agent.cli import main
from llm_core import ModelConfig, Transformer, save_model
from llm_infer import load
from llm_serve import ServerConfig, ServerThread, create_app
from llm_tokenizer import Tokenizer

CALL = '<tool_call>{"name": "write_file", "arguments": {"path": "notes.txt", "content": "hello"}}</tool_call>'
ANSWER = "Done: notes.txt says hello."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, ids): the tiny model served by llm-serve, and the ids of the call and answer."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trained = Tokenizer.train([text], 400, special_tokens=special, eos_token="<|im_end|>")
    hf = json.loads(trained.to_hf_json())
    for offset, content in enumerate((CALL, ANSWER)):
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
        vocab_size=tokenizer.vocab_size, n_embd=64, n_layer=2, n_head=4, n_kv_head=2,
        max_seq_len=2048, mlp="swiglu",
    )  # fmt: skip
    path = tmp_path_factory.mktemp("agent-tiny") / "ckpt"
    torch.manual_seed(0)
    save_model(Transformer(config), path, tokenizer_json=tokenizer.to_hf_json())
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    llm = load(path)
    ids = {"call": llm.tokenizer.encode(CALL)[0], "answer": llm.tokenizer.encode(ANSWER)[0]}
    assert llm.tokenizer.decode([ids["call"]]) == CALL
    with ServerThread(create_app(llm, ServerConfig(model_name="tiny"))) as server:
        yield server.url, ids


class Steered(OpenAIChatModel):
    """The real OpenAI model, with a logit_bias per step: the call first, then the answer."""

    def __init__(self, url: str, ids: dict[str, int]) -> None:
        super().__init__(url)
        self.plan = [ids["call"], ids["answer"]]
        self.requests: list[dict] = []

    def stream(self, messages, **sampling):
        token = self.plan[min(len(self.requests), len(self.plan) - 1)]
        self.requests.append({"messages": messages, **sampling})
        return super().stream(messages, **sampling, logit_bias={str(token): 100}, max_tokens=1)


def test_agent_writes_a_file_through_llm_serve_tool_calls(served, tmp_path):
    url, ids = served
    root = tmp_path / "ws"
    root.mkdir()
    model = Steered(url, ids)
    log = tmp_path / "transcript.jsonl"

    async def go():
        agent = Agent(model, Workspace(root), transcript=log)
        try:
            return await agent.run("create notes.txt containing hello")
        finally:
            agent.close()
            await model.aclose()

    result = asyncio.run(go())
    assert (root / "notes.txt").read_text() == "hello"
    assert (result.answer, result.stop_reason, result.steps) == (ANSWER, "answer", 2)
    assert [r.content for r in result.calls] == ["wrote 5 bytes to notes.txt"]
    assert model.model == "tiny"  # asked the server for its models
    first, second = model.requests
    assert [t["function"]["name"] for t in first["tools"]] == [
        "read_file",
        "write_file",
        "list_dir",
    ]
    assistant, tool = second["messages"][-2:]
    (call,) = assistant["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "write_file"
    assert json.loads(call["function"]["arguments"]) == {"path": "notes.txt", "content": "hello"}
    assert tool == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": "wrote 5 bytes to notes.txt",
    }
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["task", "call", "reply", "result", "reply", "answer", "stop"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transcript.jsonl", "ws"]


def test_cli_against_llm_serve(served, tmp_path, capsys):
    url, _ = served
    root = tmp_path / "ws"
    root.mkdir()
    log = tmp_path / "t.jsonl"
    argv = [
        "--server",
        url,
        "--workspace",
        str(root),
        "--max-tokens",
        "4",
        "--transcript",
        str(log),
    ]
    code = main([*argv, "--max-steps", "1", "say hi"])
    out = capsys.readouterr().out
    assert code in (0, 3), out  # a random model answers, or calls a tool and runs out of steps
    commands = "off" if sandbox.bubblewrap() else "refused (no sandbox"
    assert f"workspace: {root}" in out and f"commands: {commands}" in out
    assert json.loads(log.read_text().splitlines()[0])["text"] == "say hi"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--server", "http://127.0.0.1:9", "--workspace", str(tmp_path), "hi"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "llm-agent: cannot reach http://127.0.0.1:9/v1: connection failed (is the server running?)"
    )
    assert main(["--server", "http://x", "--workspace", str(tmp_path / "nope"), "hi"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"llm-agent: --workspace {tmp_path / 'nope'}: no such folder"
    )
    assert (
        main(["--server", "http://x", "--workspace", str(tmp_path), "--max-steps", "0", "hi"]) == 1
    )
    assert "--max-steps must be at least 1" in capsys.readouterr().err
