"""A worker killed with SIGKILL in the middle of 2,000 events, then restarted.

Afterwards the index holds exactly the expected chunks: none lost, none duplicated,
and the registry agrees with the collections.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.natsd import EmbeddedNats, close_nats, connect
from core.settings import Settings
from ingest.chunking import chunk_markdown
from ingest.events import DocumentEvent
from ingest.publisher import publish_event
from ingest.registry import DocState, Registry
from ingest.store import ChromaStore, Tier
from ingest.worker import ensure_stream

pytestmark = pytest.mark.integration

DOCS = 250
EVENTS = 2000
PREFIX = "crash"


def _content(doc: int, version: int) -> str:
    return (f"# Article {doc}\n\n## Overview\nArticle {doc} describes product line {doc % 17} "
            f"and how customers use it.\n\n## Details\nRevision {version} of article {doc}: "
            f"the setting is {version * 7 % 101} and the limit is {doc + version}.\n")


def _events() -> list[DocumentEvent]:
    """2,000 events over 250 documents: creates, updates, deletes, stale and repeats."""
    rng = random.Random(7)
    versions = dict.fromkeys(range(DOCS), 0)
    out: list[DocumentEvent] = []
    for doc in range(DOCS):
        versions[doc] = 1
        out.append(_event(doc, 1, "CREATE"))
    while len(out) < EVENTS:
        doc = rng.randrange(DOCS)
        roll = rng.random()
        if roll < 0.08 and versions[doc] > 1:  # a stale, out-of-order event
            out.append(_event(doc, versions[doc] - 1, "UPDATE"))
        elif roll < 0.14:  # a repeat of the current version
            kind = "DELETE" if out and _is_deleted(out, doc) else "UPDATE"
            out.append(_event(doc, versions[doc], kind if versions[doc] > 1 else "CREATE"))
        elif roll < 0.20:
            versions[doc] += 1
            out.append(_event(doc, versions[doc], "DELETE"))
        else:
            versions[doc] += 1
            out.append(_event(doc, versions[doc], "UPDATE"))
    return out


def _is_deleted(events: list[DocumentEvent], doc: int) -> bool:
    last = next(e for e in reversed(events) if e.doc_id == f"doc-{doc}")
    return last.event_type.value == "DELETE"


def _event(doc: int, version: int, kind: str) -> DocumentEvent:
    return DocumentEvent.model_validate({
        "event_type": kind, "doc_id": f"doc-{doc}", "version": version,
        "content": None if kind == "DELETE" else _content(doc, version),
        "metadata": {"title": f"Article {doc}", "acl": ["public"], "source": "cms"},
    })


def _expected(events: list[DocumentEvent]) -> dict[str, list[str]]:
    """doc_id → chunk ids, applying the version rule in stream order."""
    applied: dict[str, DocumentEvent] = {}
    for ev in events:
        current = applied.get(ev.doc_id)
        if current is None or ev.version > current.version:
            applied[ev.doc_id] = ev
    return {
        doc_id: [] if ev.event_type.value == "DELETE" else
        [c.chunk_id for c in chunk_markdown(doc_id, ev.content or "", title=ev.metadata.title)]
        for doc_id, ev in applied.items()
    }


def _start_worker(nats_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "DUET_NATS_URL": nats_url, "DUET_DATA_DIR": str(data_dir),
        "DUET_COLLECTION_PREFIX": PREFIX, "DUET_LOG_LEVEL": "WARNING",
        "DUET_FETCH_BATCH": "16", "DUET_ACK_WAIT_S": "2",
    }
    log = (data_dir / "worker.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "duet_cli", "ingest-worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])


async def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    events = _events()
    nc = await connect(nats_server.url, name="test")
    js = nc.jetstream()
    await ensure_stream(js, Settings(_env_file=None))
    try:
        worker = _start_worker(nats_server.url, data_dir)
        for ev in events:
            await publish_event(nc, ev)

        async def acked() -> int:
            try:
                info = await js.consumer_info("DUET_DOCS", "duet-ingest")
            except Exception:  # the consumer is created by the worker at start
                return 0
            return info.ack_floor.stream_seq

        while await acked() < EVENTS // 3:
            assert worker.poll() is None, (data_dir / "worker.log").read_text()[-2000:]
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed_at = await acked()
        assert killed_at < EVENTS, "the worker finished before it could be killed"

        worker = _start_worker(nats_server.url, data_dir)
        for _ in range(3000):
            info = await js.consumer_info("DUET_DOCS", "duet-ingest")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            assert worker.poll() is None, (data_dir / "worker.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the restarted worker did not finish")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0

        expected = _expected(events)
        store = ChromaStore(path=data_dir / "chroma", prefix=PREFIX)
        hot = store.all_ids(Tier.hot)
        assert len(hot) == len(set(hot)), "duplicated chunk ids"
        assert store.all_ids(Tier.cold) == []
        want = sorted(cid for ids in expected.values() for cid in ids)
        assert sorted(hot) == want

        registry = await Registry.open(js, "DUET_REGISTRY", max_value_bytes=1 << 20)
        for doc_id, ids in expected.items():
            record, _ = await registry.get(doc_id)
            assert record is not None
            assert sorted(record.chunk_ids) == sorted(ids), doc_id
            assert record.state is (DocState.deleted if not ids else DocState.hot)
    finally:
        await close_nats(nc)
