"""Every JetStream stream and bucket Duet writes is bounded (real nats-server)."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig

from channels.whatsapp.store import WhatsAppStore
from core.errors import DependencyError
from core.natsd import EmbeddedNats, close_nats, connect
from core.streams import ensure_kv, ensure_stream
from ingest.events import DocumentEvent
from ingest.publisher import publish_event
from tests.faults import tmpfs

pytestmark = pytest.mark.integration


async def test_every_stream_and_bucket_of_a_running_gateway_has_a_byte_limit(gateway, nc) -> None:
    # The gateway fixture runs the whole app (sessions, escalations, audit, registry, the
    # document stream) on this server; the WhatsApp channel's store is opened beside it.
    await WhatsAppStore.open(nc.jetstream(), dedup_ttl_s=3600, lines_ttl_s=3600)
    streams = await nc.jetstream().streams_info()
    names = {s.config.name for s in streams}
    assert {"DUET_DOCS", "KV_DUET_REGISTRY", "KV_DUET_SESSIONS", "DUET_SESSION_LOG",
            "KV_DUET_CONVERSATIONS", "DUET_AUDIT", "DUET_WHATSAPP_INBOX"} <= names
    unbounded = [s.config.name for s in streams
                 if s.config.max_bytes is None or s.config.max_bytes <= 0]
    assert unbounded == []


async def test_an_existing_bucket_gets_new_limits_and_keeps_its_content(nc) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(config=KeyValueConfig(bucket="OLD", history=1,
                                                         storage=StorageType.FILE))
    await kv.put("k", b"v")
    kv = await ensure_kv(js, KeyValueConfig(bucket="OLD", history=1, ttl=3600.0,
                                            storage=StorageType.FILE, max_bytes=1 << 20))
    config = (await js.stream_info("KV_OLD")).config
    assert config.max_bytes == 1 << 20
    assert config.max_age == 3600.0
    assert (await kv.get("k")).value == b"v"
    # Opening it again with the same limits changes nothing and still works.
    again = await ensure_kv(js, KeyValueConfig(bucket="OLD", history=1, ttl=3600.0,
                                               storage=StorageType.FILE, max_bytes=1 << 20))
    assert (await again.get("k")).value == b"v"


async def test_a_full_document_stream_refuses_new_events_clearly_and_keeps_the_old(nc) -> None:
    js = nc.jetstream()
    await ensure_stream(js, StreamConfig(
        name="DOCS_SMALL", subjects=["docs.>"], storage=StorageType.FILE,
        max_bytes=64 * 1024, discard=DiscardPolicy.NEW))
    accepted = 0
    with pytest.raises(DependencyError, match="full") as refused:
        for i in range(100):
            await publish_event(nc, DocumentEvent(
                event_type="CREATE", doc_id=f"doc-{i}", version=1,
                metadata={"title": f"Doc {i}"},
                content="Returns are accepted within thirty days of delivery. " * 40))
            accepted += 1
    assert refused.value.retryable
    assert accepted > 0
    info = await js.stream_info("DOCS_SMALL")
    assert info.state.messages == accepted  # nothing accepted was dropped to make room


async def test_limits_larger_than_the_store_are_shrunk_to_fit_and_everything_starts(
        tmp_path) -> None:
    # JetStream reserves each stream's byte limit against its store (75 % of the free disk):
    # on a small disk the configured limits cannot all fit, and Duet still starts.
    with tmpfs(tmp_path / "small", 64):
        async with EmbeddedNats(tmp_path / "small" / "nats") as server:
            nc = await connect(server.url, name="test")
            try:
                js = nc.jetstream()
                info = await ensure_stream(js, StreamConfig(
                    name="BIG", subjects=["big.>"], storage=StorageType.FILE,
                    max_bytes=1 << 30, discard=DiscardPolicy.NEW))
                assert 1 << 20 <= info.config.max_bytes < 48 << 20
                kv = await ensure_kv(js, KeyValueConfig(bucket="ALSO_BIG", history=1,
                                                        storage=StorageType.FILE,
                                                        max_bytes=1 << 30))
                await kv.put("k", b"v")
                config = (await js.stream_info("KV_ALSO_BIG")).config
                assert 1 << 20 <= config.max_bytes < 48 << 20
                # opening again (a restart) still works and keeps a bounded limit
                await ensure_kv(js, KeyValueConfig(bucket="ALSO_BIG", history=1,
                                                   storage=StorageType.FILE, max_bytes=1 << 30))
                assert (await js.stream_info("KV_ALSO_BIG")).config.max_bytes > 0
            finally:
                await close_nats(nc)
