"""Every sampling parameter at and past each bound of llm-infer's one table of ranges, through
the Python API, the server (a 400 naming the parameter) and the REPL's ``/set``."""

from __future__ import annotations

import httpx
import pytest
from llm_infer import SamplingError, SamplingParams

MODEL = "tiny"  # the served name (conftest.MODEL)
USER = [{"role": "user", "content": "hi"}]


def bound_cases() -> list[tuple[str, float, bool]]:
    """``(parameter, value, valid)``: each bound itself and just past it, read off the table."""
    cases = []
    for name, field in SamplingParams.model_fields.items():
        integer = field.annotation in (int, int | None)
        step = 1 if integer else 1e-3
        for m in field.metadata:
            for attr, sign, inclusive in (("ge", -1, True), ("gt", -1, False), ("le", 1, True)):
                bound = getattr(m, attr, None)
                if bound is None:
                    continue
                cases.append((name, bound, inclusive))
                cases.append((name, bound + sign * step, False))
    return cases


CASES = bound_cases()


def companions(name: str) -> dict:
    """The other parameters a value of ``name`` needs to be judged on its own."""
    return {"logprobs": True} if name == "top_logprobs" else {}


def test_the_table_covers_every_bounded_parameter():
    names = {name for name, _, _ in CASES}
    assert names >= {
        "max_tokens",
        "min_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "top_logprobs",
    }


@pytest.mark.parametrize(("name", "value", "valid"), CASES)
def test_python_api(llm, name, value, valid):
    params = {"max_tokens": 2, **companions(name), name: value}
    if name == "min_tokens":
        params["max_tokens"] = max(2, value) if valid else 2
    if valid:
        llm.generate("x", **params)
        return
    with pytest.raises(SamplingError) as info:
        llm.generate("x", **params)
    assert info.value.param == name and name in str(info.value)


@pytest.mark.parametrize(("name", "value", "valid"), CASES)
def test_server(server, name, value, valid):
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, **companions(name), name: value}
    if name == "min_tokens" and valid:
        body["max_tokens"] = max(2, value)
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    if valid:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == name


@pytest.mark.parametrize(("name", "value", "valid"), CASES)
def test_repl_set(name, value, valid):
    conversation_module = pytest.importorskip("llm_repl.conversation")
    if name not in conversation_module.SETTINGS:
        pytest.skip(f"/set does not offer {name}")
    conversation = conversation_module.Conversation()
    if valid:
        assert conversation.set(name, str(value)) == value
        return
    with pytest.raises(conversation_module.ConversationError, match=name):
        conversation.set(name, str(value))
