"""Tool-calling agent loop for llm with sandboxed tools. No torch."""

from importlib.metadata import version as _version

from llm_agent.agent import Agent, AgentResult, Event, Transcript
from llm_agent.calls import ToolCall
from llm_agent.errors import AgentError, ToolError
from llm_agent.models import LocalChatModel, OpenAIChatModel
from llm_agent.sandbox import CommandResult
from llm_agent.tools import ToolResult
from llm_agent.workspace import DirEntry, Workspace

__version__ = _version("llm-agent")

__all__ = [
    "Agent",
    "AgentError",
    "AgentResult",
    "CommandResult",
    "DirEntry",
    "Event",
    "LocalChatModel",
    "OpenAIChatModel",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "Transcript",
    "Workspace",
    "__version__",
]
