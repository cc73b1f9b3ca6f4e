"""One document must not break ingest or retrieval for everyone (issue #11).

Three figures, each on a throwaway NATS + Chroma with the worker in process:

* **largest document**: a ~480 KB document of real text (the sample KB, the GitHub docs and
  the StackFAQ threads, one after the other) published and waited for: bytes, chunks,
  seconds, and this process's RSS before, at its peak and after;
* **small behind large**: three large documents published, then small ones right behind
  them: published → applied lag of the small ones (p50 / max), and of the large ones;
* **sample KB answers**: one question per sample article answered by the retrieval agent
  (right = the first citation is that article) before and after a 474 KB document of
  repeated support words is published (the quality gate quarantines it), and after the
  same junk is forced into the index past the gate (the crowd-out defences alone).

``CROWD_BENCH_SMOKE=1`` shrinks every size for a quick check; the lead runs it idle.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agents.retrieval import AnswerDelta, Journeys, PrefetchCache, RetrievalAgent, TurnContext
from bench.common import save, scratch_runtime, summary
from ingest.chunking import chunk_markdown
from ingest.events import DocumentEvent
from ingest.kb import chunk_metadata
from ingest.publisher import publish_and_wait, publish_event
from ingest.runtime import KnowledgeRuntime
from ingest.store import StoredChunk, Tier
from ingest.worker import result_subject

ROOT = Path(__file__).resolve().parents[1]
SMOKE = os.environ.get("CROWD_BENCH_SMOKE") == "1"
SAMPLE_KB = ROOT / "configs" / "sample_kb"
#: One question per sample article: (question, the article that answers it).
QUESTIONS = [
    ("I forgot my password, how do I reset it?", "account-and-password-reset"),
    ("Why does the app say my bulb is unreachable?", "app-troubleshooting"),
    ("How do I create a schedule for my lights?", "automations-and-schedules"),
    ("What payment methods do you accept?", "billing-and-payments"),
    ("How do I reset my Lumora bulb?", "bulb-reset"),
    ("Can I cancel my order after I placed it?", "cancel-or-change-order"),
    ("What are your support hours?", "contact-support"),
    ("How do I pair the dimmer switch?", "dimmer-switch-setup"),
    ("How do I update the hub firmware?", "firmware-updates"),
    ("How do I factory reset the hub?", "hub-reset"),
    ("How do I set up the Lumora hub?", "hub-setup"),
    ("Do you ship to Canada?", "international-shipping"),
    ("Can I cut the light strip to length?", "light-strip-installation"),
    ("How much is Lumora Plus per month?", "lumora-plus"),
    ("How long does the motion sensor battery last?", "motion-sensor-setup"),
    ("How can I track my order?", "order-tracking"),
    ("How do I pair a new bulb with the hub?", "pairing-bulbs"),
    ("How much does the starter kit cost?", "pricing"),
    ("What data does Lumora collect about me?", "privacy-and-data"),
    ("Can I return a product I already opened?", "returns-policy"),
    ("How much does standard shipping cost?", "shipping-options"),
    ("How do I turn on two-factor authentication?", "two-factor-authentication"),
    ("How do I connect my lights to Alexa?", "voice-assistants"),
    ("How long is the warranty on the bulbs?", "warranty"),
]
SUPPORT_WORDS = ["password", "reset", "account", "login", "help", "support", "order", "refund",
                 "billing", "shipping", "two", "factor", "code", "phone", "app", "hub"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def real_text(size_bytes: int) -> str:
    """Real articles one after the other, cut at an article boundary near ``size_bytes``."""
    parts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLE_KB.glob("*.md"))]
    parts += [p.read_text(encoding="utf-8")
              for p in sorted((ROOT / "bench" / "corpora" / "ghdocs").glob("*.md"))]
    faq = json.loads((ROOT / "bench" / "corpora" / "stackfaq" / "stackExchange-FAQ.json")
                     .read_text())["root"]["qapair"]
    for pair in faq:
        answers = pair["answer"] if isinstance(pair["answer"], list) else [pair["answer"]]
        parts.append(f"# {pair['question'].strip()}\n\n" + "\n\n".join(
            a.strip() for a in answers if a and a.strip()))
    out: list[str] = []
    length = 0
    for part in parts:
        if length + len(part.encode()) + 2 > size_bytes:
            break
        out.append(part)
        length += len(part.encode()) + 2
    return "\n\n".join(out)


def junk_text(size_bytes: int, seed: int = 11) -> str:
    rnd = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size_bytes:
        words.append(rnd.choice(SUPPORT_WORDS))
        length += len(words[-1]) + 1
    return "# Support\n\n" + " ".join(words)[:size_bytes]


def _event(doc_id: str, content: str, title: str, version: int = 1) -> DocumentEvent:
    return DocumentEvent.model_validate({
        "event_type": "CREATE", "doc_id": doc_id, "version": version, "content": content,
        "metadata": {"title": title, "acl": ["public"], "source": "cms"}})


async def largest_document() -> dict[str, Any]:
    size = 120 * 1024 if SMOKE else 480 * 1024
    text = real_text(size)
    async with scratch_runtime() as rt:
        assert rt.nc is not None and rt.registry is not None
        await asyncio.sleep(1.0)  # start-up work (topic index) settles
        rss_before = _rss_mb()
        peak = [rss_before]
        sampling = True

        async def sample() -> None:
            while sampling:
                peak.append(_rss_mb())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        _, outcome = await publish_and_wait(rt.nc, _event("largest", text, "Largest"),
                                            timeout_s=900)
        took_s = time.perf_counter() - started
        await asyncio.sleep(2.0)  # the worker trims the heap after announcing; topics settle
        sampling = False
        await sampler
        rss_after = _rss_mb()
        record, _ = await rt.registry.get("largest")
        return {"bytes": len(text.encode()), "outcome": outcome["outcome"],
                "chunks": len(record.chunk_ids) if record else 0, "seconds": round(took_s, 2),
                "rss_before_mb": round(rss_before), "rss_peak_mb": round(max(peak)),
                "rss_after_mb": round(rss_after)}


async def small_behind_large() -> dict[str, Any]:
    large_bytes = 24 * 1024 if SMOKE else 120 * 1024
    n_small = 5 if SMOKE else 20
    # the smoke run's "large" documents are smaller: the lane threshold follows them
    overrides = {"large_document_bytes": 16 * 1024} if SMOKE else {}
    async with scratch_runtime(**overrides) as rt:
        nc = rt.nc
        assert nc is not None
        text = real_text(4 * large_bytes)
        chunk = len(text) // 4
        large = [_event(f"large-{i}", text[i * chunk:(i + 1) * chunk], f"Large {i}")
                 for i in range(3)]
        small = [_event(f"small-{i}", f"# Note {i}\n\nShort note number {i} about store "
                        f"hours, open from nine to five.", f"Note {i}") for i in range(n_small)]
        done: dict[str, float] = {}
        published: dict[str, float] = {}

        async def run(name: str, ev: DocumentEvent) -> None:
            sub = await nc.subscribe(result_subject(name), max_msgs=1)
            published[name] = time.perf_counter()
            await publish_event(nc, ev, event_id=name)
            await sub.next_msg(timeout=900)
            done[name] = time.perf_counter()

        tasks = [asyncio.create_task(run(ev.doc_id, ev)) for ev in large]
        await asyncio.sleep(0.1)
        tasks += [asyncio.create_task(run(ev.doc_id, ev)) for ev in small]
        await asyncio.gather(*tasks)
        lag = {n: (done[n] - published[n]) * 1000 for n in done}
        return {"large_bytes_each": large_bytes,
                "small_lag_ms": summary([v for n, v in lag.items() if n.startswith("small")]),
                "large_lag_ms": summary([v for n, v in lag.items() if n.startswith("large")])}


async def _answers(rt: KnowledgeRuntime) -> dict[str, Any]:
    assert rt.kb is not None
    agent = RetrievalAgent(rt.kb, journeys=Journeys.load())
    await agent.warm_up()
    right: list[str] = []
    wrong: dict[str, str | None] = {}
    try:
        for question, doc in QUESTIONS:
            finals = [e async for e in agent.stream(
                TurnContext("bench", question, [], (), PrefetchCache()))
                if not isinstance(e, AnswerDelta)]
            cited = finals[-1].citations[0].doc_id if finals and finals[-1].citations else None
            (right.append(doc) if cited == doc else wrong.__setitem__(question, cited))
    finally:
        await agent.aclose()
    return {"right": len(right), "of": len(QUESTIONS), "wrong": wrong}


def _force_junk(rt: KnowledgeRuntime, text: str) -> int:
    """The junk document's chunks written straight into hot, past the quality gate."""
    assert rt.kb is not None
    chunks = chunk_markdown("junk", text)
    embedder = rt.kb.embedder
    now = datetime.now(UTC)
    for start in range(0, len(chunks), 64):
        batch = chunks[start:start + 64]
        vectors = np.asarray(embedder.embed([c.embed_text for c in batch]))
        rt.kb.store.upsert(Tier.hot, [
            StoredChunk(c.chunk_id, c.text, chunk_metadata(
                doc_id="junk", version=1, title="Support", url=None, heading=c.heading,
                source="cms", acl=["public"], reviewed=False, updated_at=now,
                position=c.position), vectors[i])
            for i, c in enumerate(batch)])
    rt.kb.note_change("junk")
    return len(chunks)


async def sample_kb_answers() -> dict[str, Any]:
    junk = junk_text(48 * 1024 if SMOKE else 474 * 1024)
    async with scratch_runtime() as rt:
        assert rt.nc is not None
        for path in sorted(SAMPLE_KB.glob("*.md")):
            await publish_and_wait(rt.nc, _event(path.stem, path.read_text(encoding="utf-8"),
                                                 path.stem), timeout_s=120)
        before = await _answers(rt)
        started = time.perf_counter()
        _, outcome = await publish_and_wait(rt.nc, _event("junk", junk, "Support"),
                                            timeout_s=900)
        gate_s = time.perf_counter() - started
        after_gate = await _answers(rt)
        forced = await asyncio.to_thread(_force_junk, rt, junk)
        after_forced = await _answers(rt)
        return {"junk_bytes": len(junk.encode()), "junk_outcome": outcome["outcome"],
                "junk_reason": outcome.get("reason"), "junk_worker_seconds": round(gate_s, 2),
                "before": before, "after_junk_published": after_gate,
                "junk_chunks_forced_into_hot": forced, "after_junk_forced_past_gate":
                after_forced}


async def main() -> None:
    save("crowd_largest_document", await largest_document())
    save("crowd_small_behind_large", await small_behind_large())
    save("crowd_sample_kb_answers", await sample_kb_answers())


if __name__ == "__main__":
    asyncio.run(main())
