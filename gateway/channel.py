"""Where channels plug in: a channel brings its routes and its start-up work.

The gateway imports no channel. Channels are found through the ``duet.channels`` entry
points (``pyproject.toml``; a separately installed package can add its own) and enabled by
``DUET_CHANNELS``; ``create_app(settings, channels=[...])`` takes an explicit list instead.
A channel's handlers reach the gateway through ``app.state.duet`` (:class:`AppState`): the
``ChatService`` (``state.chat``) and customer identity (``state.customer_tokens``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

from core.errors import ValidationError
from core.settings import Settings

if TYPE_CHECKING:
    from gateway.state import AppState

__all__ = ["ENTRY_POINT_GROUP", "Channel", "load_channels"]

log = logging.getLogger("duet.gateway")

ENTRY_POINT_GROUP = "duet.channels"


class Channel:
    """A transport: its routes, and (optionally) work that runs for the app's lifetime."""

    #: Short name, as listed in ``DUET_CHANNELS``.
    name: str = ""

    def routes(self) -> Sequence[BaseRoute]:
        """The HTTP and websocket routes this channel serves."""
        return ()

    @contextlib.asynccontextmanager
    async def lifespan(self, state: AppState) -> AsyncIterator[None]:
        """Start-up and shut-down work, entered after the chat service is ready."""
        yield


def load_channels(settings: Settings) -> list[Channel]:
    """The channels named by ``DUET_CHANNELS`` (``*``: every installed one)."""
    wanted = [n.strip() for n in settings.channels.split(",") if n.strip()]
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    names = sorted(found) if wanted == ["*"] else wanted
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValidationError(f"unknown channel(s) {unknown} in DUET_CHANNELS; "
                              f"installed: {sorted(found)}")
    channels: list[Channel] = []
    for name in names:
        factory = found[name].load()
        channel = factory(settings)
        if not isinstance(channel, Channel):
            raise ValidationError(f"entry point {name!r} did not build a Channel")
        channels.append(channel)
    log.info("channels", extra={"channels": [c.name for c in channels]})
    return channels
