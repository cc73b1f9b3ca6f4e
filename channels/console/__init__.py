"""The supervisor console, ``GET /console``: a plain HTML/JS/CSS page served by the gateway
(no build step), speaking the supervisor socket ``/v1/supervisor`` (docs/supervisor.md).

The page holds no secret: a supervisor signs in with a token of ``DUET_SUPERVISOR_TOKENS``,
kept in the tab's session storage and passed to the socket as ``?token=`` (browsers cannot
set headers on websockets); the socket refuses anyone else before the upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from core.errors import NotFoundError
from core.settings import Settings
from gateway.channel import Channel

__all__ = ["Console", "channel"]

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


class Console(Channel):
    """``GET /console`` and its static files."""

    name = "console"

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/console", page, methods=["GET"]),
                Route("/console/", slash, methods=["GET"]),
                Route("/console/{name}", asset, methods=["GET"])]


def channel(settings: Settings) -> Channel:
    """Entry point: the supervisor console."""
    return Console()
