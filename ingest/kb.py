"""The knowledge base's query API: hot and cold searched at once, merged, freshness-scored.

``score = relevance × freshness × review weight``, where relevance is the cosine
similarity, freshness comes from the source's profile (``configs/freshness.yaml``) and
the document's last change. Scoring replaces filtering: Chroma answers an unfiltered
top-k in milliseconds, but a metadata ``where`` costs tens of milliseconds at 50k chunks,
so the ACL is applied to an over-fetched candidate list and only falls back to a filtered
query when too few candidates survive it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.metrics import Metrics
from ingest.embeddings import Embedder
from ingest.freshness import FreshnessProfiles
from ingest.store import StoredChunk, Tier, VectorHit, VectorStore
from ingest.topics import TopicIndex

__all__ = ["Hit", "KnowledgeBase", "SearchResult", "chunk_metadata", "hit_from_metadata"]

PUBLIC_GROUP = "public"
UNREVIEWED_WEIGHT = 0.85


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved chunk with its scores and citation data."""

    chunk_id: str
    doc_id: str
    title: str
    url: str | None
    heading: str
    text: str
    version: int
    updated_at: datetime
    source: str
    tier: Tier
    relevance: float
    freshness: float
    score: float
    position: int = 0
    reviewed: bool = True


@dataclass(frozen=True, slots=True)
class SearchResult:
    """What one search returns."""

    hits: list[Hit]
    as_of: datetime | None
    took_ms: float


def chunk_metadata(*, doc_id: str, version: int, title: str, url: str | None, heading: str,
                   source: str, acl: list[str], reviewed: bool, updated_at: datetime,
                   position: int) -> dict[str, Any]:
    """The metadata stored with every chunk (the inverse of :func:`hit_from_metadata`)."""
    meta: dict[str, Any] = {
        "doc_id": doc_id, "version": version, "title": title, "heading": heading,
        "source": source, "acl": list(acl) or [PUBLIC_GROUP], "reviewed": reviewed,
        "updated_at": updated_at.timestamp(), "position": position,
    }
    if url:
        meta["url"] = url
    return meta


def hit_from_metadata(chunk_id: str, text: str, meta: dict[str, Any], tier: Tier, *,
                      relevance: float, freshness: float, score: float) -> Hit:
    """Build a :class:`Hit` from stored metadata."""
    return Hit(
        chunk_id=chunk_id, doc_id=str(meta.get("doc_id", "")),
        title=str(meta.get("title") or meta.get("doc_id", "")), url=meta.get("url"),
        heading=str(meta.get("heading", "")), text=text, version=int(meta.get("version", 0)),
        updated_at=datetime.fromtimestamp(float(meta.get("updated_at", 0.0)), UTC),
        source=str(meta.get("source", "default")), tier=tier, relevance=relevance,
        freshness=freshness, score=score, position=int(meta.get("position", 0)),
        reviewed=bool(meta.get("reviewed", True)),
    )


def _allowed(meta: dict[str, Any], groups: frozenset[str]) -> bool:
    acl = meta.get("acl") or ()
    return any(group in groups for group in acl)


class KnowledgeBase:
    """Search over the hot and cold collections of a :class:`VectorStore`."""

    def __init__(self, store: VectorStore, embedder: Embedder, profiles: FreshnessProfiles, *,
                 as_of: Callable[[], datetime | None] = lambda: None,
                 metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.embedder = embedder
        self.profiles = profiles
        self._as_of = as_of
        self._metrics = metrics
        self._clock = clock
        self._changed: dict[str, float] = {}
        #: Titles and headings of what is indexed now (the acknowledgment's topics).
        self.topics = TopicIndex(store, embedder, as_of=lambda: self.as_of)

    def note_change(self, doc_id: str) -> None:
        """Record that a document changed now (fed by the registry's watch)."""
        self._changed[doc_id] = time.monotonic()
        self.topics.note_change(doc_id)

    def changed_at(self, doc_id: str) -> float | None:
        """``time.monotonic()`` of the document's last observed change, if any."""
        return self._changed.get(doc_id)

    @property
    def as_of(self) -> datetime | None:
        """Timestamp of the newest event the index has applied."""
        return self._as_of()

    async def search(self, text: str, *, k: int = 8, groups: Iterable[str] = ()) -> SearchResult:
        """Embed ``text`` and search (off the event loop)."""
        return await asyncio.to_thread(self.search_text, text, k=k, groups=groups)

    def search_text(self, text: str, *, k: int = 8, groups: Iterable[str] = ()) -> SearchResult:
        """Blocking form of :meth:`search`."""
        vector = self.embedder.embed_one(text)
        return self.search_vector(vector, k=k, groups=groups)

    def search_vector(self, vector: np.ndarray, *, k: int = 8,
                      groups: Iterable[str] = ()) -> SearchResult:
        """Top ``k`` chunks the groups may see, by relevance × freshness (blocking)."""
        started = time.perf_counter()
        allowed = frozenset(groups) | {PUBLIC_GROUP}
        now = self._clock()
        best: dict[str, Hit] = {}
        # A few more than k per tier leave room for the ACL to drop some; a full page means
        # there may be more, and only then does a filtered query run.
        n = k + max(8, k // 2)
        for tier in Tier:
            raw = self.store.query(tier, vector, n)
            kept = [h for h in raw if _allowed(h.metadata, allowed)]
            if len(kept) < k and len(raw) == n:
                where = {"$or": [{"acl": {"$contains": g}} for g in sorted(allowed)]}
                if len(allowed) == 1:
                    where = {"acl": {"$contains": PUBLIC_GROUP}}
                kept = self.store.query(tier, vector, k, where=where)
                kept = [h for h in kept if _allowed(h.metadata, allowed)]
            for raw_hit in kept:
                hit = self._score(raw_hit, now)
                current = best.get(hit.chunk_id)
                if current is None or hit.score > current.score:
                    best[hit.chunk_id] = hit
        hits = sorted(best.values(), key=lambda h: h.score, reverse=True)[:k]
        took_ms = (time.perf_counter() - started) * 1000
        if self._metrics is not None:
            self._metrics.query_latency.observe(took_ms / 1000)
        return SearchResult(hits=hits, as_of=self.as_of, took_ms=took_ms)

    def documents(self, doc_ids: Iterable[str], *, groups: Iterable[str] = ()) -> list[Hit]:
        """Every chunk of these documents the groups may see, unscored (blocking)."""
        wanted = list(dict.fromkeys(doc_ids))
        allowed = frozenset(groups) | {PUBLIC_GROUP}
        seen: dict[str, Hit] = {}
        for tier in Tier:
            for chunk in self.store.by_documents(tier, wanted):
                if chunk.chunk_id in seen or not _allowed(chunk.metadata, allowed):
                    continue
                seen[chunk.chunk_id] = self._from_stored(chunk, tier)
        return sorted(seen.values(), key=lambda h: (wanted.index(h.doc_id), h.position))

    def _score(self, raw: VectorHit, now: float) -> Hit:
        meta = raw.metadata
        age_days = (now - float(meta.get("updated_at", now))) / 86400
        freshness = self.profiles.for_source(str(meta.get("source", ""))).weight(age_days)
        review = 1.0 if meta.get("reviewed", True) else UNREVIEWED_WEIGHT
        relevance = max(raw.similarity, 0.0)
        return hit_from_metadata(
            raw.chunk_id, raw.text, meta, raw.tier, relevance=relevance, freshness=freshness,
            score=relevance * freshness * review,
        )

    def _from_stored(self, chunk: StoredChunk, tier: Tier) -> Hit:
        return hit_from_metadata(chunk.chunk_id, chunk.text, chunk.metadata, tier,
                                 relevance=0.0, freshness=1.0, score=0.0)
