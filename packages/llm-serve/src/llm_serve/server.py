"""Running the app with uvicorn: in the foreground (the CLI) or on a background thread."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until interrupted (Ctrl-C)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class ServerThread:
    """``app`` served by uvicorn on a background thread (``with ServerThread(app) as s: s.url``).

    ``port=0`` picks a free port. Entering waits until the server accepts connections (and the
    engine runs); leaving stops it. Raises ``RuntimeError`` when it does not start in
    ``start_timeout`` seconds.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 30.0
    ) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.thread = threading.Thread(target=self.server.run, name="llm-serve", daemon=True)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:51234``."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
