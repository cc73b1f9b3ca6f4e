"""Ingest: event published → retrievable (idle), and sustained throughput of 2 KB documents."""

from __future__ import annotations

import asyncio
import random
import time

from bench.common import save, scratch_runtime, summary
from ingest.events import DocumentEvent
from ingest.publisher import publish_and_wait, publish_event

WORDS = ["acme", "hub", "bulb", "pairing", "reset", "firmware", "warranty", "return", "refund", "shipping", "order", "subscription", "billing", "account", "password", "motion", "sensor", "dimmer", "strip", "schedule", "scene", "voice", "assistant", "matter", "thread", "zigbee", "app", "offline", "battery", "colour", "brightness"]


def _doc(i: int, words: int, rng: random.Random) -> DocumentEvent:
    sections = []
    for s in range(max(1, words // 90)):
        body = " ".join(rng.choice(WORDS) for _ in range(90)).capitalize() + "."
        sections.append(f"## Section {s}\n{body}")
    return DocumentEvent.model_validate({
        "event_type": "CREATE", "doc_id": f"bench-{i}", "version": 1,
        "content": f"# Bench document {i}\n\n" + "\n\n".join(sections),
        "metadata": {"title": f"Bench {i}", "acl": ["public"], "source": "cms"}})


async def idle_latency(n: int = 200) -> dict:
    rng = random.Random(1)
    async with scratch_runtime() as rt:
        assert rt.nc is not None
        client_ms, worker_ms = [], []
        for i in range(n):
            ev = _doc(i, 60, rng)  # one small section
            started = time.perf_counter()
            _, outcome = await publish_and_wait(rt.nc, ev, timeout_s=30)
            client_ms.append((time.perf_counter() - started) * 1000)
            worker_ms.append(outcome["lag_ms"])
            await asyncio.sleep(0.02)  # idle system: one event at a time
        return {"published_to_retrievable_ms (client)": summary(client_ms),
                "stream_to_applied_ms (worker)": summary(worker_ms)}


async def throughput(n: int = 300) -> dict:
    rng = random.Random(2)
    async with scratch_runtime() as rt:
        assert rt.nc is not None and rt.registry is not None
        events = [_doc(i, 330, rng) for i in range(n)]  # ~2 KB each
        size = sum(len(e.content or "") for e in events) / n
        sub = await rt.nc.subscribe("duet.results.>")
        started = time.perf_counter()
        for ev in events:
            await publish_event(rt.nc, ev)
        for _ in range(n):
            await sub.next_msg(timeout=120)
        elapsed = time.perf_counter() - started
        return {"documents": n, "mean_bytes": round(size), "seconds": round(elapsed, 2),
                "docs_per_s": round(n / elapsed, 1),
                "chunks_per_s": round(rt.metrics.chunks_embedded._value.get() / elapsed, 1)}


async def main() -> None:
    save("ingest_latency", await idle_latency())
    save("ingest_throughput", await throughput())


if __name__ == "__main__":
    asyncio.run(main())
