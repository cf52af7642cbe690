"""llm-serve: an OpenAI-compatible HTTP server (FastAPI, SSE) over llm-infer's Engine, and clients."""

from importlib.metadata import version as _version

from llm_serve.app import ServerConfig, create_app
from llm_serve.errors import APIError
from llm_serve.server import ServerThread, run

__version__ = _version("llm-serve")

__all__ = ["APIError", "ServerConfig", "ServerThread", "__version__", "create_app", "run"]
