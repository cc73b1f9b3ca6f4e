"""Channels: the ways a customer reaches the gateway.

Each channel turns its transport into :class:`gateway.service.ChatService` calls and renders
the typed events of :mod:`gateway.events` its own way; none knows the agents or the router.
Channels register through the ``duet.channels`` entry points (``pyproject.toml``):

- :mod:`channels.chat_ws` — the chat websocket ``GET /v1/chat`` (docs/protocol.md §1);
- :mod:`channels.chat_http` — ``POST /v1/chat``, JSON or server-sent events;
- :mod:`channels.console` — the supervisor console ``GET /console`` (docs/supervisor.md);
- :mod:`channels.whatsapp` — the WhatsApp Cloud API webhook (docs/channels.md);
- :mod:`channels.web` — the embeddable widget ``/widget.js`` and its demo page ``/``;
- :mod:`channels.voice` — the voice websocket ``/v1/voice`` and the ``/voice`` page
  (docs/voice.md); :mod:`channels.livekit` is the LiveKit Agents worker (``duet voice-worker``).

:mod:`channels.terminal` is the ``duet chat`` terminal client (a client, not a channel).
"""

__all__: list[str] = []
