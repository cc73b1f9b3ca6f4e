"""The aging job: documents unchanged for ``DUET_HOT_MAX_AGE`` move from hot to cold.

A move copies each chunk with its vector into cold, deletes it from hot, then sets the
registry entry's state to cold (compare-and-set). Interrupted, it leaves a chunk in both
collections, which the query merge de-duplicates and the next pass finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from core.errors import ConflictError
from core.metrics import Metrics
from ingest.registry import DocState, Registry
from ingest.store import StoredChunk, Tier, VectorStore

__all__ = ["AgingJob"]

log = logging.getLogger("duet.ingest")


class AgingJob:
    """Moves documents from the hot to the cold collection."""

    def __init__(self, store: VectorStore, registry: Registry, max_age: timedelta, *,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.registry = registry
        self.max_age = max_age
        self.metrics = metrics

    async def run_once(self, *, now: float | None = None) -> int:
        """One pass; returns how many documents moved."""
        cutoff = (now if now is not None else time.time()) - self.max_age.total_seconds()
        candidates = await asyncio.to_thread(self.store.docs_changed_before, Tier.hot, cutoff)
        moved = 0
        for doc_id in sorted(candidates):
            try:
                moved += await self._move(doc_id, cutoff)
            except ConflictError:
                log.info("aging skipped a document changed meanwhile", extra={"doc_id": doc_id})
        if moved and self.metrics is not None:
            self.metrics.aged_documents.inc(moved)
        return moved

    async def _move(self, doc_id: str, cutoff: float) -> int:
        record, revision = await self.registry.get(doc_id)
        if record is None or record.state is not DocState.hot:
            return 0
        if record.updated_at.timestamp() >= cutoff:
            return 0
        chunks = await asyncio.to_thread(self.store.get, Tier.hot, record.chunk_ids,
                                         embeddings=True)
        await asyncio.to_thread(
            self.store.upsert, Tier.cold,
            [StoredChunk(c.chunk_id, c.text, c.metadata, c.embedding) for c in chunks],
        )
        await asyncio.to_thread(self.store.delete, Tier.hot, record.chunk_ids)
        await self.registry.put(record.model_copy(update={"state": DocState.cold}), revision)
        return 1
