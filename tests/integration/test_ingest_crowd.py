"""Ingest caps, the repetition gate, and small documents never waiting behind large ones
(issue #11), against real NATS, Chroma and embeddings."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from core.metrics import Metrics
from core.natsd import EmbeddedNats
from core.settings import CONFIGS_DIR
from ingest.events import DocumentEvent
from ingest.publisher import publish_and_wait, publish_event
from ingest.registry import DocState
from ingest.runtime import KnowledgeRuntime
from ingest.store import Tier
from ingest.worker import DLQ_SUBJECT, result_subject
from tests.conftest import make_settings, run_gateway
from tests.unit.test_crowd_out import junk_document

pytestmark = pytest.mark.integration

SAMPLE = sorted((CONFIGS_DIR / "sample_kb").glob("*.md"))


def event(doc_id: str, content: str, version: int = 1, title: str | None = None,
          event_type: str = "CREATE") -> DocumentEvent:
    return DocumentEvent.model_validate({
        "event_type": event_type, "doc_id": doc_id, "version": version, "content": content,
        "metadata": {"title": title or doc_id, "acl": ["public"], "source": "cms"},
    })


def large_text(first: int, count: int = 8) -> str:
    """A real, long document: several sample articles, one after the other."""
    parts = [p.read_text(encoding="utf-8") for p in SAMPLE[first:first + count]]
    return "\n\n".join(parts)


async def send(rt: KnowledgeRuntime, ev: DocumentEvent) -> dict:
    assert rt.nc is not None
    _, outcome = await publish_and_wait(rt.nc, ev, timeout_s=60)
    return outcome


async def test_a_document_over_the_chunk_cap_is_dead_lettered(runtime: KnowledgeRuntime) -> None:
    runtime.worker.applier.max_chunks = 3
    dlq = await runtime.nc.jetstream().pull_subscribe(DLQ_SUBJECT, durable="dlq-reader")
    content = "\n\n".join(f"## Section {i}\nSection {i} explains topic {i} at length here."
                          for i in range(5))
    outcome = await send(runtime, event("too-many", "# Too many\n\n" + content))
    assert outcome["outcome"] == "dead_letter"
    assert "over the cap of 3 chunks" in outcome["reason"]
    [msg] = await dlq.fetch(1, timeout=5)
    assert "over the cap of 3 chunks" in json.loads(msg.data)["reason"]
    record, _ = await runtime.registry.get("too-many")
    assert record is None


async def test_the_api_refuses_a_document_over_the_chunk_cap_with_413(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    settings = make_settings(tmp_path, nats_server.url, max_document_chunks=3)
    content = "# Many\n\n" + "\n\n".join(f"## Part {i}\nPart {i} of the guide." for i in range(5))
    body = event("many", content).model_dump(mode="json")
    async with run_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.base_url) as client:
        res = await client.post("/v1/documents", params={"wait": "true"}, json=body)
        assert res.status_code == 413, res.text
        error = res.json()["error"]
        assert error["code"] == "too_large"
        assert "document of 5 chunks is over the cap of 3 chunks" in error["message"]
        assert (await client.get("/v1/documents/many")).status_code == 404  # nothing changed


async def test_repeated_support_words_are_quarantined_and_say_why(
        runtime: KnowledgeRuntime) -> None:
    before = runtime.metrics.chunks_embedded._value.get()
    outcome = await send(runtime, event("junk", junk_document(), title="Support"))
    assert outcome["outcome"] == "quarantined"
    assert outcome["reason"].startswith("repetitive low-information text")
    record, _ = await runtime.registry.get("junk")
    assert record.state is DocState.quarantined and record.reason == outcome["reason"]
    assert runtime.metrics.chunks_embedded._value.get() == before  # nothing was embedded
    assert runtime.kb.store.count(Tier.hot) == 0


async def test_a_repetitive_section_is_dropped_and_the_rest_indexed(
        runtime: KnowledgeRuntime) -> None:
    real = (CONFIGS_DIR / "sample_kb" / "warranty.md").read_text(encoding="utf-8")
    text = real + "\n\n## Keywords\n\n" + " ".join(["warranty claim refund help"] * 40) + "\n"
    outcome = await send(runtime, event("warranty", text, title="Warranty"))
    assert outcome["outcome"] == "applied"
    assert outcome["reason"] == "dropped 1 repetitive low-information chunk(s)"
    record, _ = await runtime.registry.get("warranty")
    assert record.state is DocState.hot and record.reason == outcome["reason"]
    stored = runtime.kb.store.get(Tier.hot, record.chunk_ids)
    assert stored and not any("Keywords" in s.metadata["heading"] for s in stored)
    assert runtime.metrics.quality_dropped_chunks._value.get() == 1


async def test_small_documents_do_not_wait_behind_large_ones(
        runtime: KnowledgeRuntime) -> None:
    runtime.settings.large_document_bytes = 8 * 1024
    runtime.settings.large_lane_events = 3
    nc = runtime.nc
    done: dict[str, float] = {}

    async def outcome_of(name: str, ev: DocumentEvent) -> dict:
        sub = await nc.subscribe(result_subject(name), max_msgs=1)
        await publish_event(nc, ev, event_id=name)
        msg = await sub.next_msg(timeout=120)
        done[name] = time.monotonic()
        return json.loads(msg.data)

    large = [event(f"large-{i}", large_text(i * 8), title=f"Large {i}") for i in range(3)]
    assert all(len(ev.content.encode()) > 8 * 1024 for ev in large)
    small = event("small", "# Store hours\n\nThe store is open from nine to five on weekdays.")
    waits = [asyncio.create_task(outcome_of(f"large-{i}", ev)) for i, ev in enumerate(large)]
    await asyncio.sleep(0.2)  # the large ones are published (and fetched) first
    outcomes = await asyncio.gather(outcome_of("small", small), *waits)
    assert [o["outcome"] for o in outcomes] == ["applied"] * 4
    # the small document did not wait for the three large ones
    assert done["small"] < done["large-2"]
    assert runtime.metrics.large_lane_events._value.get() == 0


async def test_a_small_update_waits_for_the_large_version_in_the_background_lane(
        runtime: KnowledgeRuntime) -> None:
    runtime.settings.large_document_bytes = 8 * 1024
    nc = runtime.nc
    v1 = event("guide", large_text(0), version=1, title="Guide")
    v2 = event("guide", "# Guide\n\nThe short guide now says only this, in one section.",
               version=2, title="Guide", event_type="UPDATE")
    subs = {n: await nc.subscribe(result_subject(n), max_msgs=1) for n in ("v1", "v2")}
    await publish_event(nc, v1, event_id="v1")
    await publish_event(nc, v2, event_id="v2")
    results = {n: json.loads((await s.next_msg(timeout=120)).data) for n, s in subs.items()}
    assert results["v1"]["outcome"] == "applied" and results["v2"]["outcome"] == "applied"
    record, _ = await runtime.registry.get("guide")
    assert record.version == 2
    # no chunk of version 1 is left behind: the index holds exactly version 2's chunks
    hot = [cid for cid in runtime.kb.store.all_ids(Tier.hot) if cid.startswith("guide:")]
    assert sorted(hot) == sorted(record.chunk_ids)


async def test_a_large_document_is_embedded_in_bounded_batches_with_progress(
        tmp_path: Path, nats_server: EmbeddedNats, embedder) -> None:
    settings = make_settings(tmp_path, nats_server.url, embed_batch_chunks=8)
    sizes: list[int] = []

    class Recording:
        model_id, dim = embedder.model_id, embedder.dim

        def embed(self, texts):
            sizes.append(len(texts))
            return embedder.embed(texts)

        def embed_one(self, text):
            return embedder.embed_one(text)

    async with KnowledgeRuntime(settings, nats_server.url, metrics=Metrics(), run_worker=True,
                                embedder=Recording()) as rt:
        outcome = await send(rt, event("long", large_text(0), title="Long"))
        assert outcome["outcome"] == "applied"
        record, _ = await rt.registry.get("long")
        assert len(record.chunk_ids) > 16
        assert max(sizes) <= 8 and sum(sizes) == len(record.chunk_ids)


async def test_large_events_waiting_in_the_lane_are_not_redelivered(
        tmp_path: Path, nats_server: EmbeddedNats, embedder) -> None:
    # ack_wait far shorter than one large document's work: only the lane's in_progress
    # heartbeat keeps JetStream from delivering the held events again.
    settings = make_settings(tmp_path, nats_server.url, ack_wait_s=1.0,
                             large_document_bytes=8 * 1024, large_lane_events=2)
    async with KnowledgeRuntime(settings, nats_server.url, metrics=Metrics(), run_worker=True,
                                embedder=embedder) as rt:
        worker = rt.worker
        deliveries: list[int] = []
        dispatch = worker._dispatch

        async def counting(msg):
            deliveries.append(msg.metadata.num_delivered)
            await dispatch(msg)

        worker._dispatch = counting
        nc = rt.nc
        subs = {i: await nc.subscribe(result_subject(f"big-{i}"), max_msgs=1) for i in range(2)}
        for i in range(2):
            await publish_event(nc, event(f"big-{i}", large_text(i * 8), title=f"Big {i}"),
                                event_id=f"big-{i}")
        outcomes = [json.loads((await subs[i].next_msg(timeout=120)).data) for i in range(2)]
        assert [o["outcome"] for o in outcomes] == ["applied", "applied"]
        assert deliveries == [1, 1]
