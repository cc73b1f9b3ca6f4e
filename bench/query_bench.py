"""Query latency of ``KnowledgeBase.search_vector`` (hot + cold merged, top 8) by store size.

An embedded ``ChromaStore`` in a temp dir is filled directly (no NATS, no model) with
random unit vectors (384 dims), ~600-character texts and the metadata the worker stores
(``chunk_metadata``): ~90 % cold and ~10 % hot, hot capped at 2,000 chunks. At 1k, 10k
and 50k chunks, 500 random unit query vectors are timed, then 500 distinct question
texts through ``search_text`` (query embedding included).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bench.common import save, summary
from core.settings import CONFIGS_DIR
from ingest.embeddings import OnnxEmbedder
from ingest.freshness import FreshnessProfiles
from ingest.kb import KnowledgeBase, chunk_metadata
from ingest.store import ChromaStore, StoredChunk, Tier

SIZES = (1_000, 10_000, 50_000)
HOT_SHARE = 0.1
HOT_CAP = 2_000
QUERIES = 500
DIM = 384
BATCH = 1_000
TARGET_P50_MS = 10.0
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qbench")

WORDS = ("acme", "hub", "bulb", "pairing", "reset", "firmware", "warranty", "return",
         "refund", "shipping", "order", "subscription", "billing", "account", "password",
         "motion", "sensor", "dimmer", "strip", "schedule", "scene", "voice", "assistant",
         "matter", "thread", "zigbee", "app", "offline", "battery", "colour", "brightness",
         "the", "a", "to", "of", "and", "in", "is", "for", "your", "with", "on", "when", "you",
         "can", "after", "before", "within", "days", "minutes", "settings", "press", "hold",
         "open", "tap", "choose", "device", "light", "room", "automation")
SOURCES = ("cms", "zendesk", "sample", "default")
GROUPS = (["public"], ["public"], ["public"], ["staff"], ["public", "beta"])


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _chunks(start: int, n: int, rng: np.random.Generator, words: random.Random,
            now: datetime) -> list[StoredChunk]:
    vectors = _unit(rng, n)
    out = []
    for j in range(n):
        i = start + j
        doc = i // 6  # ~6 sections per document
        text = " ".join(words.choice(WORDS) for _ in range(100)).capitalize() + "."
        meta = chunk_metadata(
            doc_id=f"doc-{doc}", version=1 + i % 3, title=f"Article {doc}",
            url=f"https://help.example.com/a/{doc}", heading=f"Article {doc} > Section {i % 6}",
            source=SOURCES[i % len(SOURCES)], acl=GROUPS[i % len(GROUPS)],
            reviewed=i % 10 != 0, updated_at=now - timedelta(days=words.uniform(0, 365)),
            position=i % 6)
        out.append(StoredChunk(f"doc-{doc}:{i:08x}", text, meta, vectors[j]))
    return out


def _fill(store: ChromaStore, tier: Tier, have: int, want: int, rng: np.random.Generator,
          words: random.Random, now: datetime, offset: int) -> None:
    for start in range(have, want, BATCH):
        n = min(BATCH, want - start)
        store.upsert(tier, _chunks(offset + start, n, rng, words, now))


def _questions(n: int, words: random.Random) -> list[str]:
    seen: set[str] = set()
    while len(seen) < n:
        seen.add("How do I " + " ".join(words.choice(WORDS) for _ in range(words.randint(4, 9)))
                 + "?")
    return sorted(seen)


def _median_ms(fn: Callable[[], object], n: int = 100) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(sorted(times)[n // 2], 2)


def components(store: ChromaStore, rng: np.random.Generator, k: int = 8) -> dict[str, float]:
    """Median ms of the Chroma calls one ``search_vector(k=8)`` makes (one query of
    ``k + max(8, k/2)`` per tier, in turn), and of cheaper forms it could take."""
    n = k + max(8, k // 2)
    vectors = iter(_unit(rng, 1000))
    cold = store._collections[Tier.cold]
    winners = [h.chunk_id for h in store.query(Tier.cold, next(vectors), k)]

    def both_tiers_in_parallel() -> None:
        v = next(vectors)
        list(_POOL.map(lambda tier: store.query(tier, v, n), list(Tier)))

    return {
        f"query cold n={n}, documents+metadatas": _median_ms(
            lambda: store.query(Tier.cold, next(vectors), n)),
        f"query hot n={n}, documents+metadatas": _median_ms(
            lambda: store.query(Tier.hot, next(vectors), n)),
        f"query cold n={n}, distances only": _median_ms(
            lambda: cold.query(query_embeddings=[next(vectors)], n_results=n,
                               include=["distances"])),
        f"get {k} ids, documents+metadatas": _median_ms(lambda: store.get(Tier.cold, winners)),
        f"hot + cold n={n} in 2 threads": _median_ms(both_tiers_in_parallel),
    }


def measure() -> dict:
    rng = np.random.default_rng(7)
    words = random.Random(7)
    now = datetime.now(UTC)
    embedder = OnnxEmbedder(threads=1)
    profiles = FreshnessProfiles.load(CONFIGS_DIR / "freshness.yaml")
    report: dict = {"k": 8, "queries": QUERIES, "target_p50_ms_at_50k": TARGET_P50_MS}
    with tempfile.TemporaryDirectory(prefix="duet-query-bench-") as tmp:
        store = ChromaStore(path=Path(tmp) / "chroma", prefix="qbench")
        kb = KnowledgeBase(store, embedder, profiles, as_of=lambda: now)
        hot = cold = 0
        for size in SIZES:
            want_hot = min(HOT_CAP, round(size * HOT_SHARE))
            want_cold = size - want_hot
            started = time.perf_counter()
            _fill(store, Tier.hot, hot, want_hot, rng, words, now, offset=0)
            _fill(store, Tier.cold, cold, want_cold, rng, words, now, offset=10_000_000)
            fill_s = time.perf_counter() - started
            hot, cold = want_hot, want_cold
            for v in _unit(rng, 20):  # warm-up
                kb.search_vector(v, k=8)
            vector_ms = []
            for v in _unit(rng, QUERIES):
                t0 = time.perf_counter()
                result = kb.search_vector(v, k=8)
                vector_ms.append((time.perf_counter() - t0) * 1000)
                assert len(result.hits) == 8
            text_ms = []
            for q in _questions(QUERIES, words):  # distinct texts: no embedding-cache hits
                t0 = time.perf_counter()
                kb.search_text(q, k=8)
                text_ms.append((time.perf_counter() - t0) * 1000)
            report[f"{size}_chunks"] = {
                "hot": store.count(Tier.hot), "cold": store.count(Tier.cold),
                "fill_s": round(fill_s, 1),
                "search_vector_ms": summary(vector_ms), "search_text_ms": summary(text_ms),
                "components_ms_p50": components(store, rng),
            }
            print(f"  {size:>6} chunks: search_vector p50 {summary(vector_ms)['p50']} ms, "
                  f"search_text p50 {summary(text_ms)['p50']} ms", flush=True)
    report["meets_target"] = report["50000_chunks"]["search_vector_ms"]["p50"] <= TARGET_P50_MS
    return report


async def main() -> None:
    save("query_latency", await asyncio.to_thread(measure))


__all__ = ["main", "measure"]

if __name__ == "__main__":
    asyncio.run(main())
