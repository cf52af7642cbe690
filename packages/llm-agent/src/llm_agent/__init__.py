"""Tool-calling agent loop for llm with sandboxed tools. No torch."""

from importlib.metadata import version as _version

from llm_agent.errors import AgentError, ToolError
from llm_agent.sandbox import CommandResult
from llm_agent.workspace import DirEntry, Workspace

__version__ = _version("llm-agent")

__all__ = ["AgentError", "CommandResult", "DirEntry", "ToolError", "Workspace", "__version__"]
