"""The embeddable web chat widget: ``/widget.js`` and a demo page at ``/``.

One tag adds the chat bubble to any page::

    <script src="https://support.example.com/widget.js"
            data-duet-url="https://support.example.com" async></script>

The widget (``static/widget.js``, no framework, styles in a shadow root) speaks the chat
websocket ``/v1/chat`` exactly as docs/protocol.md §1 says. A page on another origin needs
that origin in ``DUET_ALLOWED_ORIGINS``. See docs/channels.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core.settings import Settings
from gateway.channel import Channel

__all__ = ["DEMO_CSP", "STATIC_DIR", "WebWidget", "channel"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


@cache
def _asset(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


async def widget_js(request: Request) -> Response:
    """The widget script (cached for five minutes)."""
    return Response(_asset("widget.js"), media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300",
                             "X-Content-Type-Options": "nosniff"})


#: The demo page's policy: its own script and socket only (its one inline ``<style>``).
DEMO_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")


async def demo_page(request: Request) -> Response:
    """A page that embeds the widget with its one tag."""
    return Response(_asset("demo.html"), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": DEMO_CSP})


class WebWidget(Channel):
    """``GET /widget.js`` and (unless ``DUET_WIDGET_DEMO_PAGE=false``) ``GET /``."""

    name = "web_widget"

    def __init__(self, settings: Settings) -> None:
        self.demo = settings.widget_demo_page

    def routes(self) -> Sequence[BaseRoute]:
        routes: list[BaseRoute] = [Route("/widget.js", widget_js, methods=["GET", "HEAD"])]
        if self.demo:
            routes.append(Route("/", demo_page, methods=["GET", "HEAD"]))
        return routes


def channel(settings: Settings) -> Channel:
    """Entry point: the web chat widget and its demo page."""
    return WebWidget(settings)
