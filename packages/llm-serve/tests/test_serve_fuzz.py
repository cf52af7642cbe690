"""Fuzzing from the server's own OpenAPI schema: no request body, valid or not, gets a 500.

Bodies are drawn from each POST route's JSON schema (a small schema-to-hypothesis translation
of what pydantic emits: ``$ref``, ``anyOf``, ``enum``/``const``, the scalar types with their
bounds, arrays and objects; hypothesis-jsonschema does not run on current hypothesis), with
each constraint sometimes broken on purpose, and from arbitrary JSON that ignores the schema; every answer is a success or an OpenAI-shaped error below 500
(a 503 is allowed only as the busy answer).
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

POST_ROUTES = [
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
]
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def fuzz_server(make_server_module):
    with make_server_module(max_tokens_cap=4) as running:
        yield running


@pytest.fixture(scope="module")
def http(fuzz_server):
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(http) -> dict:
    return http.get("/openapi.json").json()


def body_schema(openapi: dict, path: str) -> dict:
    """The route's request body schema (its $refs point into ``openapi["components"]``)."""
    return openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def from_schema(schema: dict, root: dict, depth: int = 0) -> st.SearchStrategy:
    """Values that mostly follow ``schema``; one in ten of each is arbitrary JSON instead."""
    return (
        st.one_of(_conforming(schema, root, depth), JSON)
        if depth
        else _conforming(schema, root, depth)
    )


def _conforming(schema: dict, root: dict, depth: int) -> st.SearchStrategy:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(root["components"]["schemas"][name], root, depth)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, root, depth) for s in schema[key]])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return st.just({})
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        draw = {k: from_schema(v, root, depth + 1) for k, v in props.items()}
        if not props:
            return st.dictionaries(st.text(max_size=8), JSON, max_size=3)
        return st.fixed_dictionaries(
            {k: v for k, v in draw.items() if k in required},
            optional={k: v for k, v in draw.items() if k not in required},
        )
    if kind == "array":
        items = schema.get("items", {})
        return st.lists(
            from_schema(items, root, depth + 1) if items else JSON,
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 5), 5),
        )
    if kind == "string":
        return st.text(
            min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40)
        )
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return st.integers(lo, hi) | st.integers(-3, 3)
    if kind == "number":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False) | st.floats(-3, 3)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


def check(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path", POST_ROUTES)
def test_schema_bodies_never_500(http, openapi, path):
    bodies = from_schema(body_schema(openapi, path), openapi)
    model = st.sampled_from(["tiny", "tiny", "x"])

    @FUZZ
    @given(body=bodies, model=model)
    def run(body, model):
        if isinstance(body, dict) and "model" in body:
            body = {**body, "model": model}  # mostly the served model, to get past the 404
        check(http.post(path, json=body))

    run()


@pytest.mark.parametrize("path", POST_ROUTES)
def test_arbitrary_json_never_500(http, path):
    @FUZZ
    @given(body=JSON)
    def run(body):
        check(http.post(path, content=json.dumps(body)))

    run()
