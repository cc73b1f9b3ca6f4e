"""The ASGI application: ``create_app(settings)``.

Its lifespan starts what the settings ask for: an embedded nats-server when
``DUET_NATS_URL`` is unset, the knowledge runtime (embedded Chroma or a Chroma server,
the embedding model, the ingest worker when ``DUET_RUN_WORKER``), and the sample
knowledge base when ``DUET_LOAD_SAMPLE_KB``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from core.metrics import Metrics
from core.natsd import EmbeddedNats, redact_url, write_private
from core.settings import CONFIGS_DIR, Settings
from gateway import chat, documents, ops
from gateway.auth import security_middleware
from gateway.errors import exception_handlers
from gateway.services import chat_services
from gateway.state import AppState
from ingest.loader import events_from_directory
from ingest.publisher import publish_event
from ingest.runtime import KnowledgeRuntime

__all__ = ["SAMPLE_KB_DIR", "create_app"]

log = logging.getLogger("duet.gateway")

SAMPLE_KB_DIR = CONFIGS_DIR / "sample_kb"


async def _load_sample_kb(runtime: KnowledgeRuntime) -> None:
    assert runtime.nc is not None
    count = 0
    for event in events_from_directory(SAMPLE_KB_DIR, source="sample"):
        await publish_event(runtime.nc, event, event_id=f"sample-{event.doc_id}-v{event.version}")
        count += 1
    log.info("sample knowledge base published", extra={"documents": count})


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> Starlette:
    """The gateway for these settings."""
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            nats_url = settings.nats_url
            if not nats_url:
                server = await stack.enter_async_context(EmbeddedNats(settings.nats_dir))
                nats_url = server.url
                marker = settings.data_dir / "nats.url"
                write_private(marker, nats_url + "\n")
                stack.callback(lambda: marker.unlink(missing_ok=True))
            runtime = await stack.enter_async_context(
                KnowledgeRuntime(settings, nats_url, metrics=metrics,
                                 run_worker=settings.run_worker))
            state = AppState(settings=settings, metrics=metrics, runtime=runtime)
            app.state.duet = state
            async with asyncio.TaskGroup() as tasks:
                if settings.load_sample_kb:
                    tasks.create_task(_load_sample_kb(runtime))
                for start in app.state.startup_hooks:
                    await stack.enter_async_context(start(state))
            log.info("gateway ready", extra={"nats": redact_url(nats_url)})
            yield

    app = Starlette(
        routes=[*ops.routes, *documents.routes, *chat.routes],
        middleware=security_middleware(settings),
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.startup_hooks = [chat_services]
    return app
