"""The knowledge base's query API: hot and cold searched at once, merged, freshness-scored.

``score = relevance × freshness × review weight``, where relevance is the cosine
similarity, freshness comes from the source's profile (``configs/freshness.yaml``) and
the document's last change. Scoring replaces filtering: Chroma answers an unfiltered
top-k in milliseconds, but a metadata ``where`` costs tens of milliseconds at 50k chunks,
so the ACL is applied to an over-fetched candidate list and only falls back to a filtered
query when too few candidates survive it.

One document must not crowd out the others (issue #11): a collection of at most
``exact_max_chunks`` chunks is searched exactly (:mod:`ingest.exact`), a larger one by its
HNSW graph, over-fetched, and asked again without the documents that filled the page; and
no document contributes more than ``max_chunks_per_doc`` candidates.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from core.metrics import Metrics
from ingest.embeddings import Embedder
from ingest.exact import ExactIndex, doc_of
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


_T = TypeVar("_T")
#: Pages of the exact ranking read before a restrictive ACL falls back to a filtered query.
_EXACT_PAGES = 8


def _capped(items: Iterable[_T], cap: int, *, key: Callable[[_T], str]) -> list[_T]:
    """``items`` in their order, at most ``cap`` of each key."""
    seen: Counter[str] = Counter()
    out: list[_T] = []
    for item in items:
        k = key(item)
        if seen[k] < cap:
            seen[k] += 1
            out.append(item)
    return out


class KnowledgeBase:
    """Search over the hot and cold collections of a :class:`VectorStore`."""

    def __init__(self, store: VectorStore, embedder: Embedder, profiles: FreshnessProfiles, *,
                 as_of: Callable[[], datetime | None] = lambda: None,
                 metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, exact_max_chunks: int = 5000,
                 max_chunks_per_doc: int = 4) -> None:
        self.store = store
        self.embedder = embedder
        self.profiles = profiles
        self._as_of = as_of
        self._metrics = metrics
        self._clock = clock
        self._changed: dict[str, float] = {}
        #: Candidates one document may contribute to a search.
        self.max_chunks_per_doc = max(1, max_chunks_per_doc)
        self._exact = {tier: ExactIndex(store, tier, max_chunks=exact_max_chunks)
                       for tier in Tier}
        #: Titles and headings of what is indexed now (the acknowledgment's topics).
        self.topics = TopicIndex(store, embedder, as_of=lambda: self.as_of)

    def note_change(self, doc_id: str) -> None:
        """Record that a document changed now (fed by the registry's watch)."""
        self._changed[doc_id] = time.monotonic()
        self.topics.note_change(doc_id)
        for exact in self._exact.values():
            exact.invalidate()

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
        # A few more than k per tier leave room for the ACL and the per-document cap.
        n = k + max(8, k // 2)
        for tier in Tier:
            for raw_hit in self._candidates(tier, vector, n, allowed):
                hit = self._score(raw_hit, now)
                current = best.get(hit.chunk_id)
                if current is None or hit.score > current.score:
                    best[hit.chunk_id] = hit
        ranked = sorted(best.values(), key=lambda h: h.score, reverse=True)
        hits = _capped(ranked, self.max_chunks_per_doc, key=lambda h: h.doc_id)[:k]
        took_ms = (time.perf_counter() - started) * 1000
        if self._metrics is not None:
            self._metrics.query_latency.observe(took_ms / 1000)
        return SearchResult(hits=hits, as_of=self.as_of, took_ms=took_ms)

    def _candidates(self, tier: Tier, vector: np.ndarray, n: int,
                    allowed: frozenset[str]) -> list[VectorHit]:
        """Up to ``n`` allowed nearest chunks of one tier, at most the cap per document."""
        ranked = self._exact[tier].rank(vector)
        if ranked is not None:
            if self._metrics is not None:
                self._metrics.exact_searches.labels(tier.value).inc()
            found = self._exact_candidates(tier, ranked, n, allowed)
            if found is not None:
                return found
        return self._graph_candidates(tier, vector, n, allowed)

    def _exact_candidates(self, tier: Tier, ranked: tuple[list[str], np.ndarray], n: int,
                          allowed: frozenset[str]) -> list[VectorHit] | None:
        """Walk the exact ranking, reading metadata a page at a time (None: too many pages
        were refused by the ACL; the filtered graph query is cheaper then)."""
        ids, sims = ranked
        cap = self.max_chunks_per_doc
        per_doc: Counter[str] = Counter()
        out: list[VectorHit] = []
        page = 2 * n
        i = 0
        for _ in range(_EXACT_PAGES):
            wanted: list[tuple[str, float]] = []
            while i < len(ids) and len(wanted) < page:
                cid = ids[i]
                if per_doc[doc_of(cid)] < cap:
                    wanted.append((cid, float(sims[i])))
                i += 1
            if not wanted:
                return out
            stored = {c.chunk_id: c for c in self.store.get(tier, [cid for cid, _ in wanted])}
            for cid, sim in wanted:
                chunk = stored.get(cid)  # gone since the snapshot: skip it
                if chunk is None or not _allowed(chunk.metadata, allowed):
                    continue
                doc = str(chunk.metadata.get("doc_id") or doc_of(cid))
                if per_doc[doc] >= cap:
                    continue
                per_doc[doc] += 1
                out.append(VectorHit(chunk_id=cid, tier=tier, similarity=sim, text=chunk.text,
                                     metadata=chunk.metadata))
                if len(out) >= n:
                    return out
            if i >= len(ids):
                return out
        return None

    def _graph_candidates(self, tier: Tier, vector: np.ndarray, n: int,
                          allowed: frozenset[str]) -> list[VectorHit]:
        """HNSW, over-fetched; asked again without the documents that crowd the page."""
        fetch = 3 * n
        raw = self.store.query(tier, vector, fetch)
        cap = self.max_chunks_per_doc
        kept = _capped([h for h in raw if _allowed(h.metadata, allowed)], cap,
                       key=lambda h: str(h.metadata.get("doc_id", "")))
        if len(kept) >= n or len(raw) < fetch:
            return kept[:n]
        where: dict[str, Any] = {"$or": [{"acl": {"$contains": g}} for g in sorted(allowed)]}
        if len(allowed) == 1:
            where = {"acl": {"$contains": PUBLIC_GROUP}}
        counts = Counter(str(h.metadata.get("doc_id", "")) for h in raw)
        crowding = sorted(d for d, c in counts.items() if c > cap)
        if crowding:
            where = {"$and": [where, {"doc_id": {"$nin": crowding}}]}
        more = [h for h in self.store.query(tier, vector, n, where=where)
                if _allowed(h.metadata, allowed)]
        merged = {h.chunk_id: h for h in kept + more}
        ordered = sorted(merged.values(), key=lambda h: h.similarity, reverse=True)
        return _capped(ordered, cap, key=lambda h: str(h.metadata.get("doc_id", "")))[:n]

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
