"""llama.cpp's collection of real chat templates (models/templates/*.jinja, from the
llama-cpp-python sdist) renders as transformers renders it, conversation by conversation."""

from __future__ import annotations

import pytest
from llm_tokenizer import TokenizerError
from llm_tokenizer.chat import render_chat_template

pytestmark = pytest.mark.peers

chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city."}},
                "required": ["city"],
            },
        },
    }
]
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "Hello — 你好 🙂"}],
    "system and two turns": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "  And 3+3?  "},
    ],
    "reasoning": [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because.", "reasoning_content": "Think first."},
        {"role": "user", "content": "OK"},
    ],
}


def render_both(template: str, messages, **kwargs):
    """(transformers' text or its error, ours or our error)."""
    try:
        theirs = chat_template_utils.render_jinja_template(
            conversations=[messages], chat_template=template, **kwargs
        )[0][0]
    except Exception as e:  # any failure of the reference: ours must fail too
        theirs = e
    try:
        ours = render_chat_template(template, messages, **kwargs)
    except TokenizerError as e:
        ours = e
    return theirs, ours


def test_every_real_template_renders_as_transformers(llama_cpp_models):
    templates = sorted((llama_cpp_models / "templates").glob("*.jinja"))
    assert len(templates) > 20
    differ, compared = [], 0
    for path in templates:
        template = path.read_text(encoding="utf-8")
        for name, messages in CONVERSATIONS.items():
            for extra in ({}, {"tools": TOOLS}):
                kwargs = dict(
                    add_generation_prompt=True, bos_token="<s>", eos_token="</s>", **extra
                )
                theirs, ours = render_both(template, messages, **kwargs)
                if isinstance(theirs, Exception):
                    if not isinstance(ours, TokenizerError):
                        differ.append(
                            (path.name, name, extra != {}, f"transformers raised {theirs!r:.120}")
                        )
                    continue
                compared += 1
                if ours != theirs:
                    differ.append(
                        (path.name, name, extra != {}, f"{ours!r:.200} != {theirs!r:.200}")
                    )
    assert compared > 3 * len(templates)
    assert not differ, f"{len(differ)} renders differ, e.g. {differ[:3]}"
