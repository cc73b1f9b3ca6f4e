"""The composition root: ``create_app(settings, channels=...)``.

Its lifespan starts what the settings ask for: an embedded nats-server when
``DUET_NATS_URL`` is unset, the knowledge runtime (embedded Chroma or a Chroma server,
the embedding model, the ingest worker when ``DUET_RUN_WORKER``), the chat service, the
sample knowledge base when ``DUET_LOAD_SAMPLE_KB``, and then each channel's own start-up
work. The gateway's own routes (documents, health, metrics) are mounted with every
channel's routes; channels are found by :func:`gateway.channel.load_channels`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from core.logs import server_log_filters
from core.metrics import Metrics
from core.natsd import EmbeddedNats, redact_url, write_private
from core.settings import CONFIGS_DIR, Settings
from gateway import documents, ops, supervisor
from gateway.admission import Admission, AdmissionMiddleware
from gateway.auth import CustomerTokens, security_middleware
from gateway.channel import Channel, load_channels
from gateway.errors import exception_handlers
from gateway.health import HealthProber
from gateway.services import chat_services
from gateway.state import AppState
from ingest.loader import events_from_directory
from ingest.publisher import publish_event
from ingest.runtime import KnowledgeRuntime

__all__ = ["SAMPLE_KB_DIR", "create_app", "server_options"]

log = logging.getLogger("duet.gateway")

SAMPLE_KB_DIR = CONFIGS_DIR / "sample_kb"


async def _load_sample_kb(runtime: KnowledgeRuntime) -> None:
    assert runtime.nc is not None
    count = 0
    for event in events_from_directory(SAMPLE_KB_DIR, source="sample"):
        await publish_event(runtime.nc, event, event_id=f"sample-{event.doc_id}-v{event.version}")
        count += 1
    log.info("sample knowledge base published", extra={"documents": count})


def server_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the gateway (``uvicorn.Config(app, **server_options(settings))``):
    the websocket implementation, the largest client message, the lifespan."""
    return {"ws": "websockets-sansio", "ws_max_size": settings.ws_max_bytes,
            "lifespan": "on"}


def create_app(settings: Settings, *, metrics: Metrics | None = None,
               channels: Sequence[Channel] | None = None) -> Starlette:
    """The gateway for these settings, serving ``channels`` (default: ``DUET_CHANNELS``)."""
    metrics = metrics or Metrics()
    channels = list(load_channels(settings) if channels is None else channels)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(server_log_filters())
            nats_url = settings.nats_url
            server: EmbeddedNats | None = None
            if not nats_url:
                server = await stack.enter_async_context(EmbeddedNats(
                    settings.nats_dir, min_backoff_s=settings.nats_restart_min_backoff_s,
                    max_backoff_s=settings.nats_restart_max_backoff_s,
                    min_free_bytes=settings.nats_restart_min_free_mb * 2**20))
                nats_url = server.url
                marker = settings.data_dir / "nats.url"
                write_private(marker, nats_url + "\n")
                stack.callback(lambda: marker.unlink(missing_ok=True))
            runtime = await stack.enter_async_context(
                KnowledgeRuntime(settings, nats_url, metrics=metrics,
                                 run_worker=settings.run_worker))
            state = AppState(settings=settings, metrics=metrics, runtime=runtime,
                             customer_tokens=CustomerTokens(settings))
            app.state.duet = state
            async with asyncio.TaskGroup() as tasks:
                if settings.load_sample_kb:
                    tasks.create_task(_load_sample_kb(runtime))
                await stack.enter_async_context(chat_services(state))
            for channel in channels:
                await stack.enter_async_context(channel.lifespan(state))
            health = await stack.enter_async_context(
                HealthProber(settings, runtime, metrics=metrics, embedded=server))
            app.state.health = health
            log.info("gateway ready", extra={"nats": redact_url(nats_url)})
            health.accepting = True
            try:
                yield
            finally:
                health.accepting = False  # /readyz: 503 from the first moment of shutdown

    channel_routes = [route for channel in channels for route in channel.routes()]
    return Starlette(
        routes=[*ops.routes, *documents.routes, *supervisor.routes, *channel_routes],
        # admission first: a flood is refused before any other work (docs/limits.md)
        middleware=[Middleware(AdmissionMiddleware, admission=Admission(settings, metrics)),
                    *security_middleware(settings)],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
