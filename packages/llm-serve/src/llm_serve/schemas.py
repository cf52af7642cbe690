"""Request bodies, mirroring OpenAI's (pydantic v2).

Unknown fields are ignored, as OpenAI-compatible servers commonly do, so clients that send
newer options (``user``, ``service_tier``, ...) keep working; every field declared here is
validated, and a bad value is answered with a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from llm_infer.params import field_type
from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16  # choices per request: n (times the prompts of a batched completion)

# The sampling fields, with llm-infer's SamplingParams' types and ranges (one table)
Temperature = field_type("temperature")
TopP = field_type("top_p")
TopK = field_type("top_k")
MinP = field_type("min_p")
MaxTokens = field_type("max_tokens")
MinTokens = field_type("min_tokens")
Seed = field_type("seed")
PresencePenalty = field_type("presence_penalty")
FrequencyPenalty = field_type("frequency_penalty")
RepetitionPenalty = field_type("repetition_penalty")
IgnoreEos = field_type("ignore_eos")
TopLogprobs = field_type("top_logprobs")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingRequest(_Body):
    """The sampling fields shared by completions and chat completions."""

    model: str
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    max_tokens: MaxTokens = None
    seed: Seed = None
    presence_penalty: PresencePenalty | None = None
    frequency_penalty: FrequencyPenalty | None = None
    logit_bias: dict[str, float] | None = None
    # extras beyond OpenAI's API, as vLLM and llama.cpp's server accept them
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    min_tokens: MinTokens | None = None
    ignore_eos: IgnoreEos | None = None


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``: ``prompt`` is text, token ids, or a list of either (a batch)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    """One message; ``content`` is text, a list of text parts, or null (an assistant's tool calls)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: ToolChoiceFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``: ``input`` is text, token ids, or a list of either."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class TokenizeRequest(_Body):
    """``POST /tokenize``: either ``prompt`` or ``messages`` (rendered by the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[int]
