"""Chat templates: Jinja2 rendered with HF transformers' environment and variables."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm_tokenizer.errors import TokenizerError

# ChatML, the template HF falls back to for tokenizers without one.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators=None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Tracking(threading.local):
    """The render in progress on this thread: its output so far and its generation spans."""

    chunks: list[str] | None = None
    spans: list[tuple[int, int]] | None = None


_TRACKING = _Tracking()


class GenerationBlocks(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: HF's marker of the assistant's tokens. The body
    renders as it is; while spans are tracked, its [start, end) character span is recorded."""

    tags = {"generation"}  # noqa: RUF012 (jinja's class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(
            lineno
        )

    def _generation(self, caller: jinja2.runtime.Macro) -> str:
        text = caller()
        if _TRACKING.chunks is not None and _TRACKING.spans is not None:
            start = sum(map(len, _TRACKING.chunks))
            _TRACKING.spans.append((start, start + len(text)))
        return text


def _template_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return dict(*args, **kwargs)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationBlocks, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _template_dict
    return env.from_string(template)


# A message's reasoning under its older names; templates read `reasoning_content` (as in HF).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _messages_for_template(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain dicts; `reasoning_content` and `thinking` filled from the other names, as HF does."""
    out = []
    for message in messages:
        message = dict(message)
        reasoning = next(
            (message[f] for f in _REASONING_FIELDS if message.get(f) is not None), None
        )
        if reasoning is not None:
            message.setdefault("reasoning_content", reasoning)
            message.setdefault("thinking", reasoning)
        out.append(message)
    return out


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    **kwargs: Any,
) -> str:
    """Render a chat template as HF's `apply_chat_template(..., tokenize=False)` does (`tools`
    and `documents` are None unless given).

    Raises TokenizerError when the template does not parse, fails to render, or calls
    `raise_exception` (templates use it to reject, e.g., a bad role order).
    """
    return render_chat_template_with_spans(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **kwargs,
    )[0]


def render_chat_template_with_spans(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
    **kwargs: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """`render_chat_template`, and the [start, end) character spans of the text that the
    template's `{% generation %}` blocks wrote (the assistant's tokens; HF's
    `return_assistant_tokens_mask` marks the tokens over these spans).

    Raises TokenizerError as `render_chat_template` does.
    """
    kwargs.setdefault("tools", None)
    kwargs.setdefault("documents", None)
    if _TRACKING.chunks is not None:
        raise TokenizerError("chat templates cannot be rendered from inside a chat template")
    chunks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        compiled = _compile(template)
        _TRACKING.chunks, _TRACKING.spans = chunks, spans
        for chunk in compiled.generate(
            messages=_messages_for_template(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **kwargs,
        ):
            chunks.append(chunk)
    except jinja2.exceptions.TemplateError as e:
        raise TokenizerError(f"chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ArithmeticError) as e:
        # A template's own bug, or messages of a shape it does not expect.
        raise TokenizerError(f"chat template failed: {type(e).__name__}: {e}") from None
    finally:
        _TRACKING.chunks = _TRACKING.spans = None
    return "".join(chunks), spans
