"""llm-repl: the terminal chat, over a local model or any OpenAI-compatible server."""

from importlib.metadata import version as _version

from llm_repl.app import Repl
from llm_repl.backends import BackendError, LocalBackend, RemoteBackend
from llm_repl.conversation import Conversation, ConversationError

__version__ = _version("llm-repl")

__all__ = [
    "BackendError",
    "Conversation",
    "ConversationError",
    "LocalBackend",
    "RemoteBackend",
    "Repl",
    "__version__",
]
