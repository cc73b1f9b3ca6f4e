"""Shared fixtures: a real nats-server, real Chroma in temp dirs, the real embedding model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.metrics import Metrics
from core.natsd import EmbeddedNats, close_nats, connect
from core.settings import Settings
from ingest.chunking import chunk_markdown
from ingest.embeddings import OnnxEmbedder
from ingest.freshness import FreshnessProfiles
from ingest.kb import KnowledgeBase, chunk_metadata
from ingest.runtime import KnowledgeRuntime
from ingest.store import ChromaStore, StoredChunk, Tier

KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test module declares its kind (unit, integration or e2e)."""
    for item in items:
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            raise pytest.UsageError(f"{item.nodeid}: mark the module unit, integration or e2e")


@pytest.fixture(scope="session")
def embedder() -> OnnxEmbedder:
    """The bundled all-MiniLM-L6-v2, loaded once."""
    return OnnxEmbedder(threads=1)


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A fresh nats-server with JetStream on a free port and a temp store."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats):
    """A client connection to that server."""
    client = await connect(nats_server.url, name="test")
    try:
        yield client
    finally:
        await close_nats(client)


@pytest.fixture
def chroma_store(tmp_path: Path) -> ChromaStore:
    """Embedded Chroma in a temp dir (a unique prefix: Chroma caches clients per path)."""
    return ChromaStore(path=tmp_path / "chroma", prefix=f"t{abs(hash(tmp_path)) % 10**8}")


def index_markdown(store: ChromaStore, embedder: OnnxEmbedder, docs: dict[str, str], *,
                   tier: Tier = Tier.hot, acl: list[str] | None = None, source: str = "cms",
                   updated_at: datetime | None = None, version: int = 1) -> None:
    """Index Markdown documents straight into a store (no NATS), as the worker would."""
    stamp = updated_at or datetime.now(UTC)
    for doc_id, text in docs.items():
        chunks = chunk_markdown(doc_id, text)
        vectors = embedder.embed([c.embed_text for c in chunks])
        title = chunks[0].heading.split(" > ")[0] if chunks else doc_id
        store.upsert(tier, [
            StoredChunk(c.chunk_id, c.text, chunk_metadata(
                doc_id=doc_id, version=version, title=title, url=None, heading=c.heading,
                source=source, acl=acl or ["public"], reviewed=True, updated_at=stamp,
                position=c.position), vectors[i])
            for i, c in enumerate(chunks)
        ])


@pytest.fixture
def make_kb(chroma_store: ChromaStore, embedder: OnnxEmbedder):
    """Build a KnowledgeBase over Markdown documents indexed directly."""

    def build(docs: dict[str, str], **kwargs) -> KnowledgeBase:
        index_markdown(chroma_store, embedder, docs, **kwargs)
        return KnowledgeBase(chroma_store, embedder, FreshnessProfiles(),
                             as_of=lambda: datetime.now(UTC))

    return build


def make_settings(tmp_path: Path, nats_url: str | None = None, **overrides) -> Settings:
    """Settings for a test: everything under tmp_path, no sample KB, quick aging off.

    Every client of a test comes from 127.0.0.1, so the per-address rates (a clock-driven
    limit that a slow or fast machine would hit at different tests) are lifted unless the
    test sets them; tests/integration/test_limits.py does.
    """
    values = {
        "data_dir": tmp_path / "data", "nats_url": nats_url, "load_sample_kb": False,
        "port": 0, "aging_interval_s": 3600.0, "collection_prefix": f"t{abs(hash(tmp_path)) % 10**8}",
        "session_open_burst": 100_000, "session_open_rate_per_s": 100_000,
        "address_message_burst": 100_000, "address_message_rate_per_s": 100_000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def runtime(tmp_path: Path, nats_server: EmbeddedNats, embedder: OnnxEmbedder
                  ) -> AsyncIterator[KnowledgeRuntime]:
    """The knowledge runtime with its ingest worker, on a real NATS and embedded Chroma."""
    settings = make_settings(tmp_path, nats_server.url)
    async with KnowledgeRuntime(settings, nats_server.url, metrics=Metrics(), run_worker=True,
                                embedder=embedder) as rt:
        yield rt


class Gateway:
    """A running gateway: its base URL, app state and settings."""

    def __init__(self, base_url: str, app, settings: Settings) -> None:
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://")
        self.app = app
        self.settings = settings

    @property
    def state(self):
        return self.app.state.duet


@contextlib.asynccontextmanager
async def run_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """Serve ``create_app(settings)`` with uvicorn on a free loopback port."""
    import uvicorn

    from gateway.app import create_app, server_options

    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            **server_options(settings))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway stopped during start-up")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Gateway(f"http://127.0.0.1:{port}", app, settings)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def gateway(tmp_path: Path, nats_server: EmbeddedNats) -> AsyncIterator[Gateway]:
    """The real gateway on a free port, with a real NATS, embedded Chroma and the worker."""
    async with run_gateway(make_settings(tmp_path, nats_server.url)) as gw:
        yield gw
