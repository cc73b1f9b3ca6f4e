"""A session's retrieval memory: prefetched chunks with their vectors, and the last topic.

The retrieval agent fills it after a turn (the cited documents, their usual next
documents, documents other sessions asked about together) and reads it first on the
next turn: when a cached chunk is similar enough to the (rewritten) query, the answer is
built from the cache without searching the knowledge base. The same object remembers
the topic of the last turn, so a follow-up can be rewritten even without the history.
Mutate it from the event loop only (lookups are microseconds; loading runs elsewhere).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ingest.kb import Hit

__all__ = ["CachedChunk", "PrefetchCache", "SessionTopic"]


@dataclass(frozen=True)
class CachedChunk:
    """A prefetched chunk, its unit vector and when it was stored."""

    hit: Hit
    vector: np.ndarray
    stored_at: float


@dataclass(frozen=True)
class SessionTopic:
    """What the last turn was about: the query follow-ups refer to and what answered it."""

    #: The last self-contained query (a follow-up's rewrite extends it, never replaces it).
    anchor: str
    #: Title of the document that answered, if any.
    title: str | None = None
    #: Its id.
    doc_id: str | None = None
    #: Unit embedding of ``anchor`` (None: compute when needed).
    vector: np.ndarray | None = None
    #: The last turn's decision ("answer", "clarify" or "fallback").
    decision: str = "answer"


class PrefetchCache:
    """Bounded per-session cache of chunks with vectors, counting hits and misses."""

    def __init__(self, *, max_chunks: int = 256, ttl_s: float = 600.0,
                 min_similarity: float = 0.6, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_chunks = max_chunks
        self.ttl_s = ttl_s
        self.min_similarity = min_similarity
        self.hits = 0
        self.misses = 0
        self.topic: SessionTopic | None = None
        #: Documents cited in this session, oldest first (co-retrieval statistics).
        self.cited: deque[str] = deque(maxlen=16)
        #: The knowledge base's ``as_of`` when the newest chunks were loaded.
        self.as_of: datetime | None = None
        self._clock = clock
        self._chunks: OrderedDict[str, CachedChunk] = OrderedDict()
        self._groups: frozenset[str] | None = None
        self._matrix: np.ndarray | None = None
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._chunks)

    @property
    def doc_ids(self) -> set[str]:
        """Documents with at least one live chunk in the cache."""
        self._expire()
        return {c.hit.doc_id for c in self._chunks.values()}

    def add(self, hits: Sequence[Hit], vectors: np.ndarray, *, groups: Iterable[str],
            as_of: datetime | None, loaded_at: float | None = None) -> int:
        """Store chunks (newest win, oldest evicted); returns how many are cached now."""
        groups = frozenset(groups)
        if self._groups is not None and groups != self._groups:
            self._chunks.clear()  # the customer's access changed: nothing old may be shown
        self._groups = groups
        now = self._clock() if loaded_at is None else loaded_at
        for hit, vector in zip(hits, vectors, strict=True):
            self._chunks.pop(hit.chunk_id, None)
            self._chunks[hit.chunk_id] = CachedChunk(hit, np.asarray(vector, np.float32), now)
        while len(self._chunks) > self.max_chunks:
            self._chunks.popitem(last=False)
        if as_of is not None:
            self.as_of = as_of
        self._matrix = None
        return len(self._chunks)

    def lookup(self, vector: np.ndarray, *, groups: Iterable[str], k: int = 8,
               min_similarity: float | None = None,
               changed_at: Callable[[str], float | None] | None = None,
               ) -> list[tuple[Hit, float]] | None:
        """The ``k`` most similar chunks if the best reaches the threshold (a hit), else None.

        ``changed_at(doc_id)`` gives when a document last changed (same clock as the
        cache's): chunks loaded before their document changed are dropped first, so a
        cached answer is never older than the knowledge base.
        """
        threshold = self.min_similarity if min_similarity is None else min_similarity
        self._expire()
        if changed_at is not None:
            self.drop_changed(changed_at)
        if not self._chunks or frozenset(groups) != self._groups:
            self.misses += 1
            return None
        if self._matrix is None:
            self._ids = list(self._chunks)
            self._matrix = np.stack([self._chunks[i].vector for i in self._ids])
        sims = self._matrix @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-sims)[:k]
        if float(sims[order[0]]) < threshold:
            self.misses += 1
            return None
        self.hits += 1
        return [(self._chunks[self._ids[i]].hit, float(sims[i])) for i in order]

    def drop_changed(self, changed_at: Callable[[str], float | None]) -> int:
        """Forget chunks of documents changed since they were loaded; returns how many."""
        stale = [cid for cid, c in self._chunks.items()
                 if (t := changed_at(c.hit.doc_id)) is not None and t >= c.stored_at]
        for cid in stale:
            del self._chunks[cid]
        if stale:
            self._matrix = None
        return len(stale)

    def clear(self) -> None:
        """Forget every chunk (counters and topic stay)."""
        self._chunks.clear()
        self._matrix = None

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl_s
        stale = [cid for cid, c in self._chunks.items() if c.stored_at < cutoff]
        for cid in stale:
            del self._chunks[cid]
        if stale:
            self._matrix = None
