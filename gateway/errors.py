"""The one error edge of the gateway: every HTTP refusal is ``{"error": {"code", "message"}}``.

:func:`install_error_handlers` (or :func:`exception_handlers`, to pass to ``Starlette``)
registers one handler per family:

- any :class:`~core.errors.DuetError` — the status comes from its type (or an
  ``http_status`` attribute, or its ``code`` for error types defined elsewhere);
- ``pydantic.ValidationError`` — 422 with one readable line per problem;
- Starlette's ``HTTPException`` (unknown route 404, wrong method 405, ...);
- anything else — 500 ``internal``: the stack goes to the log, nothing to the caller.

Status by type: validation 422, unauthorized 401, forbidden 403, not found 404,
conflict 409, too large 413, unsupported media 415, rate limited 429 and dependency
outage 503 with ``Retry-After``, timeout 504. On a websocket that is not yet accepted the same JSON body is
the denial response of the upgrade; on an accepted one the socket is closed (1008/1011).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketState

from core.errors import (
    ConflictError,
    DependencyError,
    DuetError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    TimeoutError_,
    UnauthorizedError,
    UnsupportedMediaError,
    ValidationError,
)

__all__ = [
    "MAX_PROBLEMS",
    "RATE_RETRY_AFTER_S",
    "RETRY_AFTER_S",
    "error_body",
    "error_response",
    "exception_handlers",
    "install_error_handlers",
    "send_refusal",
    "status_for",
    "validation_message",
]

log = logging.getLogger("duet.gateway")

#: what a 503 asks the client to wait before trying again.
RETRY_AFTER_S = 5
#: the problems of one invalid input that are put into words (the rest are counted).
MAX_PROBLEMS = 5
#: what a 429 asks for when the refusal does not say (``retry_after_s`` on the error).
RATE_RETRY_AFTER_S = 1

# Most specific first: TimeoutError_ is a DependencyError, the size and media errors are
# ValidationErrors.
_STATUS_BY_TYPE: tuple[tuple[type[DuetError], int], ...] = (
    (TimeoutError_, 504),
    (DependencyError, 503),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaError, 415),
    (ValidationError, 422),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
)
# For DuetError subclasses defined outside core.errors (the chat protocol's errors).
_STATUS_BY_CODE = {
    "invalid": 422, "invalid_json": 422, "invalid_message": 422, "unknown_type": 422,
    "empty_message": 422, "binary_not_supported": 415, "unauthorized": 401,
    "forbidden": 403, "not_found": 404, "conflict": 409, "duplicate_message": 409,
    "resume_gap": 409, "no_turn": 409, "too_large": 413, "message_too_long": 413,
    "unsupported_media_type": 415, "rate_limited": 429, "dependency": 503, "timeout": 504,
    "unavailable": 503, "turn_failed": 502, "fatal": 500,
}
_CODE_BY_STATUS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large",
    415: "unsupported_media_type", 422: "invalid", 429: "rate_limited", 503: "dependency",
    504: "timeout",
}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The wire shape of an HTTP refusal (always encodable: a lone surrogate becomes ``?``)."""
    return {"error": {"code": _utf8(code), "message": _utf8(message)}}


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def validation_message(exc: pydantic.ValidationError) -> str:
    """One readable line per problem of a pydantic validation error (never the input).

    Bounded whatever came in: the first :data:`MAX_PROBLEMS` problems, field paths cut to
    60 characters (a client's own key can be a megabyte long), each reason to 120.
    """
    problems = exc.errors(include_url=False, include_context=False, include_input=False)
    lines = [f"{_clip('.'.join(map(str, e['loc'])) or 'body', 60)}: {_clip(e['msg'], 120)}"
             for e in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
    return "; ".join(lines)


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"


def status_for(exc: DuetError) -> int:
    """The HTTP status of a Duet error."""
    explicit = getattr(exc, "http_status", None)
    if isinstance(explicit, int):
        return explicit
    for kind, status in _STATUS_BY_TYPE:
        if isinstance(exc, kind):
            return status
    return _STATUS_BY_CODE.get(exc.code, 503 if exc.retryable else 400)


def error_response(exc: DuetError | pydantic.ValidationError, *, status: int | None = None,
                   extra: Mapping[str, Any] | None = None) -> JSONResponse:
    """The JSON refusal for ``exc`` (``extra``: more top-level fields beside ``error``)."""
    if isinstance(exc, pydantic.ValidationError):
        code, message, status = "invalid", validation_message(exc), status or 422
    else:
        code, message, status = exc.code, exc.message, status or status_for(exc)
    wait_s = getattr(exc, "retry_after_s", None)
    headers = ({"Retry-After": str(wait_s or RETRY_AFTER_S)} if status == 503
               else {"Retry-After": str(wait_s or RATE_RETRY_AFTER_S)} if status == 429
               else {"WWW-Authenticate": "Bearer"} if status == 401 else None)
    return JSONResponse({**error_body(code, message), **(extra or {})}, status_code=status,
                        headers=headers)


async def send_refusal(scope: Mapping[str, Any], send: Send, status: int, code: str,
                       message: str, *, retry_after_s: int | None = None) -> None:
    """Answer from ASGI middleware with the error shape (a websocket: its upgrade's denial);
    ``retry_after_s`` sets ``Retry-After`` (503 has one anyway)."""
    body = json.dumps(error_body(code, message)).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None or status == 503:
        headers.append((b"retry-after", str(retry_after_s or RETRY_AFTER_S).encode()))
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # the server says 403
            return
        prefix = "websocket."
    else:
        prefix = ""
    await send({"type": f"{prefix}http.response.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": body})


async def _deliver(conn: HTTPConnection, response: JSONResponse) -> Response | None:
    """The response for HTTP and for a websocket not yet accepted; else close the socket."""
    if isinstance(conn, WebSocket) and conn.application_state is not WebSocketState.CONNECTING:
        if conn.application_state is WebSocketState.CONNECTED:
            await conn.close(code=1011 if response.status_code >= 500 else 1008)
        return None
    return response


async def _duet_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, DuetError)
    response = error_response(exc)
    if response.status_code >= 500:
        log.warning("request failed: %s", exc.code,
                    extra={"path": conn.url.path, "reason": exc.message})
    return await _deliver(conn, response)


async def _pydantic_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, pydantic.ValidationError)
    return await _deliver(conn, error_response(exc))


async def _http_exception(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code = _CODE_BY_STATUS.get(status, "bad_request" if status < 500 else "internal")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    # Starlette's own details ("Not Found", "Method Not Allowed") are safe; others are not ours.
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    if status >= 500:
        message = phrase
    headers = dict(exc.headers or {})
    if status == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    return await _deliver(conn, JSONResponse(error_body(code, message), status_code=status,
                                             headers=headers or None))


async def _internal(conn: HTTPConnection, exc: Exception) -> Response | None:
    log.error("unhandled error on %s", conn.url.path, exc_info=exc)
    return await _deliver(conn, JSONResponse(
        error_body("internal", "internal error"), status_code=500))


Handler = Callable[[HTTPConnection, Exception], Awaitable[Response | None]]


def exception_handlers() -> dict[Any, Handler]:
    """The handlers to pass as ``Starlette(exception_handlers=...)``.

    ``Exception`` is served by Starlette's outermost error middleware, which answers with
    this handler's body and then re-raises, so the server logs the failure too.
    """
    return {
        DuetError: _duet_error,
        pydantic.ValidationError: _pydantic_error,
        HTTPException: _http_exception,
        Exception: _internal,
    }


def install_error_handlers(app: Starlette) -> None:
    """Register :func:`exception_handlers` on ``app``."""
    for kind, handler in exception_handlers().items():
        app.add_exception_handler(kind, handler)
