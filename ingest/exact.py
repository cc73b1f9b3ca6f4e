"""Exact nearest-neighbour search over a small collection: one dot product, no graph.

An HNSW graph answers approximately, and one document that owns hundreds of
near-duplicate chunks makes it answer badly: the search walks into the duplicates' dense
cluster and never reaches the best match elsewhere (issue #11: the 2FA article at
similarity 0.77 was never returned once a 474 KB document of repeated words was indexed).
A collection of a few thousand chunks needs no graph at all: its vectors fit in a few MB
and ``matrix @ vector`` ranks all of them in well under a millisecond.

:class:`ExactIndex` keeps the vectors of one collection in memory. Chunk ids are content
addressed (a chunk's vector never changes under one id), so a refresh reads only the ids
it has not seen. It refreshes when told that a document changed and when the collection's
count moves; a chunk deleted since is simply not found when its metadata is read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ingest.store import Tier, VectorStore

__all__ = ["ExactIndex", "doc_of"]

_BATCH = 512


def doc_of(chunk_id: str) -> str:
    """The document id of a chunk id (``doc_id:digest``)."""
    return chunk_id.rsplit(":", 1)[0]


@dataclass(frozen=True)
class _Snapshot:
    ids: list[str]
    matrix: np.ndarray
    count: int


class ExactIndex:
    """The vectors of one collection, for brute-force search while it is small."""

    def __init__(self, store: VectorStore, tier: Tier, *, max_chunks: int) -> None:
        self._store = store
        self._tier = tier
        self._max_chunks = max_chunks
        self._snapshot: _Snapshot | None = None
        self._dirty = True
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Something changed: the next search re-reads the collection's ids."""
        self._dirty = True

    def rank(self, vector: np.ndarray) -> tuple[list[str], np.ndarray] | None:
        """Every chunk id with its similarity, best first; None when the collection is too
        large for exact search (blocking)."""
        snapshot = self._current()
        if snapshot is None:
            return None
        if not snapshot.ids:
            return [], np.zeros(0, dtype=np.float32)
        sims = snapshot.matrix @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-sims, kind="stable")
        return [snapshot.ids[i] for i in order], sims[order]

    def _current(self) -> _Snapshot | None:
        if self._max_chunks <= 0:
            return None
        count = self._store.count(self._tier)
        if count > self._max_chunks:
            self._snapshot = None
            return None
        snapshot = self._snapshot
        if snapshot is not None and not self._dirty and snapshot.count == count:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and not self._dirty and snapshot.count == count:
                return snapshot
            self._dirty = False
            self._snapshot = snapshot = self._rebuild(snapshot)
            return snapshot

    def _rebuild(self, previous: _Snapshot | None) -> _Snapshot:
        ids = self._store.all_ids(self._tier)
        known = {cid: i for i, cid in enumerate(previous.ids)} if previous else {}
        rows: dict[str, np.ndarray] = {}
        missing = [cid for cid in ids if cid not in known]
        for start in range(0, len(missing), _BATCH):
            for chunk in self._store.get(self._tier, missing[start:start + _BATCH],
                                         embeddings=True):
                if chunk.embedding is not None:
                    rows[chunk.chunk_id] = chunk.embedding
        kept: list[str] = []
        vectors: list[np.ndarray] = []
        for cid in ids:
            if cid in known:
                assert previous is not None
                vectors.append(previous.matrix[known[cid]])
            elif cid in rows:
                vectors.append(rows[cid])
            else:
                continue
            kept.append(cid)
        matrix = (np.stack(vectors).astype(np.float32, copy=False) if vectors
                  else np.zeros((0, 1), dtype=np.float32))
        return _Snapshot(ids=kept, matrix=matrix, count=len(ids))
