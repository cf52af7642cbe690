"""What every request passes before a route: request counts, the API key, the body-size cap;
and the handlers that turn every error into OpenAI's shape."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serve.errors import APIError, error_body
from llm_serve.metrics import Metrics
from llm_serve.state import ServerConfig

ROUTES = (
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
    "/health",
    "/metrics",
)
OPEN_ROUTES = ("/health",)  # answered without the API key


class Guard:
    """Counts requests, checks the API key and caps the body size, before the app sees them.

    The body is read here (up to ``max_body_bytes``) and replayed to the app, so a chunked
    upload cannot slip past the cap; an over-long one is answered 413 at once.
    """

    def __init__(self, app: ASGIApp, *, config: ServerConfig, metrics: Metrics) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.expected = f"Bearer {config.api_key}".encode() if config.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counting_send)
        finally:
            self.metrics.count_request(route, status)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in OPEN_ROUTES:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = (
                    "Incorrect API key provided."
                    if given
                    else "Missing API key: send 'Authorization: Bearer <key>'."
                )
                await _send_error(send, APIError(401, message, code="invalid_api_key"))
                return
        limit = self.config.max_body_bytes
        too_large = APIError(
            413, f"request body too large: the limit is {limit} bytes", code="request_too_large"
        )
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > limit:
            await _send_error(
                send, too_large if length.isdigit() else APIError(400, "bad Content-Length")
            )
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _send_error(send, too_large)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Send, error: APIError) -> None:
    response = error.response()
    await send(
        {"type": "http.response.start", "status": error.status, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


def add_error_handlers(app: FastAPI) -> None:
    """Answer validation errors (400), HTTP errors (404, 405) and crashes (500) in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if _field_part(part)]
        param = ".".join(loc) or None
        where = f"{param}: " if param else ""
        message = f"{where}{first.get('msg', 'invalid value')}"
        if first.get("type") == "json_invalid":
            message, param = f"the body is not valid JSON ({first.get('msg')})", None
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "Not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(
            error_body(exc.status_code, f"{message}: {request.method} {request.url.path}"),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(500, f"internal error: {type(exc).__name__}: {exc}"), status_code=500
        )


def _field_part(part: str | int) -> bool:
    """Whether a pydantic error location part names a field or an index (not a union member)."""
    if isinstance(part, int):
        return True
    return part != "body" and part.isidentifier() and part[0].islower() and part not in TYPE_TAGS


TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
