"""The WhatsApp Cloud API channel (on when ``DUET_WHATSAPP_ACCESS_TOKEN`` is set).

::

    Meta ──POST /channels/whatsapp/webhook──▶ signature check ─▶ JetStream inbox ─▶ 200
                                                                       │ durable consumer
    Graph API ◀── LineRenderer ◀── session events ◀── ChatService ◀────┘ (one session a number)

- :mod:`~channels.whatsapp.webhook` — the handshake and the verified, persisted deliveries;
- :mod:`~channels.whatsapp.payload` — signatures and Meta's payload shapes;
- :mod:`~channels.whatsapp.store` — inbox stream, message-id and send claims, lines (KV);
- :mod:`~channels.whatsapp.service` — the inbox consumer and the open conversations;
- :mod:`~channels.whatsapp.line` — one conversation's events as WhatsApp messages;
- :mod:`~channels.whatsapp.graph` — the Graph API client (retries, never twice);
- :mod:`~channels.whatsapp.text` — splitting at 4,096 characters, polite answers;
- :mod:`~channels.whatsapp.voice` — voice notes through the voice channel's speech-to-text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from starlette.routing import BaseRoute

from channels.whatsapp.graph import GraphClient
from channels.whatsapp.line import RenderOptions
from channels.whatsapp.metrics import WhatsAppMetrics
from channels.whatsapp.service import WhatsAppService, parse_groups
from channels.whatsapp.store import WhatsAppStore
from channels.whatsapp.voice import VoiceNotes
from channels.whatsapp.webhook import WEBHOOK_PATH, webhook_routes
from core.errors import DependencyError, ValidationError
from core.settings import Settings
from core.tasks import TaskBoard
from gateway.channel import Channel
from gateway.state import AppState

__all__ = ["WEBHOOK_PATH", "WhatsAppChannel", "channel"]

log = logging.getLogger("duet.channels.whatsapp")


class WhatsAppChannel(Channel):
    """The webhook, the inbox consumer and the Graph API client."""

    name = "whatsapp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.whatsapp_access_token is not None
        try:
            self.groups = parse_groups(settings.whatsapp_groups)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
        if self.enabled and not settings.whatsapp_phone_number_id:
            raise ValidationError("DUET_WHATSAPP_PHONE_NUMBER_ID is required with "
                                  "DUET_WHATSAPP_ACCESS_TOKEN")
        self.store: WhatsAppStore | None = None
        self.metrics: WhatsAppMetrics | None = None
        self.service: WhatsAppService | None = None

    def _runtime(self) -> tuple[WhatsAppStore, WhatsAppMetrics]:
        if self.store is None or self.metrics is None:
            raise DependencyError("the WhatsApp channel is starting", retryable=True)
        return self.store, self.metrics

    def routes(self) -> Sequence[BaseRoute]:
        return webhook_routes(self.settings, self._runtime) if self.enabled else ()

    @contextlib.asynccontextmanager
    async def lifespan(self, state: AppState) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        settings = self.settings
        if settings.whatsapp_app_secret is None:
            log.warning("DUET_WHATSAPP_APP_SECRET is unset: every webhook delivery is refused")
        nc = state.runtime.nc
        assert nc is not None and state.chat is not None
        self.metrics = WhatsAppMetrics(state.metrics.registry)
        store = await WhatsAppStore.open(
            nc.jetstream(), dedup_ttl_s=settings.whatsapp_dedup_ttl_s,
            lines_ttl_s=max(settings.session_ttl_s, settings.whatsapp_window_s) + 3600,
            inbox_max_bytes=settings.whatsapp_inbox_max_bytes,
            bucket_max_bytes=settings.state_bucket_max_bytes)
        assert settings.whatsapp_access_token is not None
        assert settings.whatsapp_phone_number_id is not None
        graph = GraphClient(
            base_url=settings.whatsapp_api_base, version=settings.whatsapp_api_version,
            phone_number_id=settings.whatsapp_phone_number_id,
            access_token=settings.whatsapp_access_token.get_secret_value(),
            attempts=settings.whatsapp_send_attempts, timeout_s=settings.whatsapp_timeout_s)
        options = RenderOptions(ack_delay_s=settings.whatsapp_ack_delay_s,
                                window_s=settings.whatsapp_window_s,
                                template=settings.whatsapp_template,
                                template_language=settings.whatsapp_template_language)
        voice = VoiceNotes(settings) if settings.whatsapp_voice_notes else None
        self.service = WhatsAppService(state.chat, store, graph, metrics=self.metrics,
                                       options=options, groups=self.groups,
                                       phone_number_id=settings.whatsapp_phone_number_id,
                                       voice=voice)
        self.store = store
        try:
            async with TaskBoard() as board:
                board.start("whatsapp-inbox", self.service.run())
                yield
        finally:
            self.store = None
            await graph.aclose()
            if voice is not None:
                voice.close()


def channel(settings: Settings) -> Channel:
    """Entry point: the WhatsApp channel (idle unless its access token is set)."""
    return WhatsAppChannel(settings)
