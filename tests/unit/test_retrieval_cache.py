"""The per-session prefetch cache: bounded, expiring, ACL-bound, counting hits and misses."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from agents.retrieval import Journeys, PrefetchCache
from agents.retrieval.prefetch import CoRetrieval
from ingest.kb import Hit
from ingest.store import Tier

pytestmark = pytest.mark.unit

STAMP = datetime(2026, 1, 2, tzinfo=UTC)


def hit(chunk_id: str, doc_id: str = "doc") -> Hit:
    return Hit(chunk_id=chunk_id, doc_id=doc_id, title=doc_id.title(), url=None,
               heading=doc_id, text=f"text of {chunk_id}", version=1, updated_at=STAMP,
               source="cms", tier=Tier.hot, relevance=0.0, freshness=1.0, score=0.0)


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hit_above_threshold_miss_below() -> None:
    cache = PrefetchCache(min_similarity=0.8)
    cache.add([hit("a", "hub-reset"), hit("b", "pairing")], np.stack([unit(1, 0), unit(0, 1)]),
              groups=("public",), as_of=STAMP)
    found = cache.lookup(unit(1, 0.1), groups=("public",))
    assert found is not None and found[0][0].chunk_id == "a" and found[0][1] > 0.99
    assert cache.lookup(unit(1, 1), groups=("public",)) is None  # cos 0.71 < 0.8
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.as_of == STAMP
    assert cache.doc_ids == {"hub-reset", "pairing"}


def test_empty_cache_is_a_miss() -> None:
    cache = PrefetchCache()
    assert cache.lookup(unit(1, 0), groups=()) is None
    assert cache.misses == 1


def test_bounded_oldest_evicted() -> None:
    cache = PrefetchCache(max_chunks=3)
    for i in range(5):
        cache.add([hit(f"c{i}", f"d{i}")], unit(1, i)[None, :], groups=(), as_of=None)
    assert len(cache) == 3
    assert cache.doc_ids == {"d2", "d3", "d4"}


def test_entries_expire() -> None:
    clock = Clock()
    cache = PrefetchCache(ttl_s=60, clock=clock)
    cache.add([hit("a")], unit(1, 0)[None, :], groups=(), as_of=None)
    clock.now = 59
    assert cache.lookup(unit(1, 0), groups=()) is not None
    clock.now = 61
    assert cache.lookup(unit(1, 0), groups=()) is None
    assert len(cache) == 0


def test_other_groups_never_see_cached_chunks() -> None:
    cache = PrefetchCache()
    cache.add([hit("a")], unit(1, 0)[None, :], groups=("staff",), as_of=None)
    assert cache.lookup(unit(1, 0), groups=("public",)) is None
    # New access rights drop what was cached under the old ones.
    cache.add([hit("b")], unit(0, 1)[None, :], groups=("public",), as_of=None)
    assert len(cache) == 1


def test_journeys_load_the_bundled_file() -> None:
    journeys = Journeys.load()
    assert journeys.next("hub-reset")[0] == "pairing-bulbs"
    assert "hub-reset" not in journeys.next("hub-reset")
    assert journeys.next("unknown") == ()


def test_co_retrieval_counts_pairs_both_ways() -> None:
    co = CoRetrieval(max_related=2)
    co.record(["a"], ["b"])
    co.record(["a", "c"], ["b"])
    co.record(["d"], ["b"])
    assert co.related("b", 1) == ["a"]
    assert set(co.related("b", 5)) <= {"a", "c", "d"} and len(co.related("b", 5)) == 2
    assert co.related("a", 3) == ["b"]
