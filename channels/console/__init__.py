"""The supervisor console, ``GET /console``: a plain HTML/JS/CSS page served by the gateway
(no build step), speaking the supervisor socket ``/v1/supervisor`` (docs/supervisor.md).

The page holds no secret: a supervisor signs in with a token of ``DUET_SUPERVISOR_TOKENS``,
kept in the tab's session storage and passed to the socket as ``?token=`` (browsers cannot
set headers on websockets); the socket refuses anyone else before the upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from core.errors import NotFoundError
from core.settings import Settings
from gateway.channel import Channel

if TYPE_CHECKING:
    from gateway.state import AppState

__all__ = ["Console", "RedactTokens", "channel"]

STATIC = Path(__file__).resolve().parent / "static"
_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
}


async def page(request: Request) -> Response:
    """The console page."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_HEADERS)


async def slash(request: Request) -> Response:
    """``/console/`` is the console too."""
    return RedirectResponse("/console", status_code=308)


async def asset(request: Request) -> Response:
    """The page's script and style sheet."""
    name = request.path_params["name"]
    media_type = _FILES.get(name)
    if media_type is None:
        raise NotFoundError("no such file")
    return FileResponse(STATIC / name, media_type=media_type, headers=_HEADERS)


_TOKEN = re.compile(r"([?&]token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Blank ``?token=`` values in log lines: uvicorn logs each accepted websocket with its
    query string, and browsers can only pass the supervisor token that way."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _TOKEN.sub(r"\1<redacted>", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


class Console(Channel):
    """``GET /console`` and its static files."""

    name = "console"

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/console", page, methods=["GET"]),
                Route("/console/", slash, methods=["GET"]),
                Route("/console/{name}", asset, methods=["GET"])]

    @contextlib.asynccontextmanager
    async def lifespan(self, state: AppState) -> AsyncIterator[None]:
        redact = RedactTokens()
        logger = logging.getLogger("uvicorn.error")
        logger.addFilter(redact)
        try:
            yield
        finally:
            logger.removeFilter(redact)


def channel(settings: Settings) -> Channel:
    """Entry point: the supervisor console."""
    return Console()
