"""A small OpenAI-compatible SSE server for the REPL's tests (stdlib only, on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []
        self.delay = 0.0  # seconds between streamed chunks
        self.chunks = 0  # extra filler chunks after the answer (for long generations)
        self.context: int | None = None  # set: serve /tokenize (a word a token) and enforce it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reply_to(self, body: dict) -> list[str]:
        question = body["messages"][-1]["content"]
        head = f"You said **{question}**.\n\n```python\nprint('hi')\n```\n"
        return [head[i : i + 7] for i in range(0, len(head), 7)] + [" more"] * self.chunks


def word_tokens(messages: list[dict]) -> int:
    """A chat prompt's length for the fake: a token a word, and 4 a message for its template."""
    return sum(len(m["content"].split()) + 4 for m in messages)


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        context = self.server.context
        if self.path == "/tokenize" and context is not None:  # like vLLM's and llm-serve's
            count = word_tokens(body["messages"])
            self._json(200, {"tokens": [0] * count, "count": count, "max_model_len": context})
            return
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": "not found"}})
            return
        self.server.requests.append(body)
        if context is not None and word_tokens(body["messages"]) + body.get("max_tokens", 1) > (
            context
        ):
            self._json(
                400,
                {"error": {"message": "context length exceeded", "type": "invalid_request_error"}},
            )
            return
        if body.get("temperature", 0) > 1.5:
            self._json(
                400, {"error": {"message": "temperature too hot", "type": "invalid_request_error"}}
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = self.server.reply_to(body)
        try:
            for i, piece in enumerate(pieces):
                delta = {"content": piece} if i else {"role": "assistant", "content": piece}
                chunk = {
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(self.server.delay)
            usage = {
                "prompt_tokens": 5,
                "completion_tokens": len(pieces),
                "total_tokens": 5 + len(pieces),
            }
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (cancelled)


@pytest.fixture
def fake_server():
    server = FakeOpenAI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
