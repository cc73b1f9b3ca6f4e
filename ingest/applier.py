"""Applying one document event to the store and the registry, idempotently.

Order of effects, chosen so that a worker killed at any point and restarted re-applies
safely: (1) upsert the new chunks (idempotent by chunk id), (2) delete the stale ones,
(3) compare-and-set the registry entry, (4) ack (done by the worker). Until (3) a
redelivered event redoes (1)–(2) harmlessly; after (3) it is recognised as a repeat.

A document over the byte or chunk cap can never apply (:class:`ValidationError`: the
worker dead-letters it). Large documents are embedded and written ``embed_batch`` chunks
at a time, with progress reported between steps: memory stays bounded by the batch, and
the worker's ``ack_wait`` never runs out on a document that is still being worked on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from core.errors import DependencyError, ValidationError
from core.metrics import Metrics
from ingest.chunking import Chunk, chunk_markdown, too_many_chunks
from ingest.embeddings import Embedder
from ingest.events import DocumentEvent, DocumentMetadata, EventType
from ingest.kb import chunk_metadata
from ingest.quality import Repetition, quality_problem, repetition_check
from ingest.registry import DocRecord, DocState, Registry
from ingest.store import StoredChunk, Tier, VectorStore

__all__ = ["ApplyResult", "Applier", "Outcome"]

_R = TypeVar("_R")
#: embedding more chunks than this reports progress to JetStream first.
_LONG_WORK_CHUNKS = 8
_INDEXED = (DocState.hot, DocState.cold)


class Outcome(StrEnum):
    """What an event did."""

    applied = "applied"
    deleted = "deleted"
    duplicate = "duplicate"
    stale = "stale"
    pending_acl = "pending_acl"
    quarantined = "quarantined"
    dead_letter = "dead_letter"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one event, with what it cost."""

    outcome: Outcome
    doc_id: str
    version: int
    reembedded: int = 0
    kept: int = 0
    removed: int = 0
    reason: str | None = None

    @property
    def changed_index(self) -> bool:
        """Whether the event changed what is (or is not) retrievable."""
        return self.outcome not in (Outcome.duplicate, Outcome.stale, Outcome.dead_letter)


class Applier:
    """Applies validated events; the worker owns delivery, acks and dead letters."""

    def __init__(self, store: VectorStore, embedder: Embedder, registry: Registry, *,
                 min_content_chars: int, metrics: Metrics | None = None,
                 max_chunk_chars: int = 1200, max_chunks: int | None = None,
                 max_content_bytes: int | None = None, embed_batch: int = 64,
                 store_timeout_s: float | None = 30.0) -> None:
        self.store = store
        self.embedder = embedder
        self.registry = registry
        self.min_content_chars = min_content_chars
        self.metrics = metrics
        self.max_chunk_chars = max_chunk_chars
        #: Chunks one document may have (None: no cap).
        self.max_chunks = max_chunks
        #: UTF-8 bytes of content one document may have (None: no cap).
        self.max_content_bytes = max_content_bytes
        #: Chunks embedded and upserted per step.
        self.embed_batch = max(1, embed_batch)
        #: Longest wait for one store call; a slower store is at fault (None: no limit).
        self.store_timeout_s = store_timeout_s

    async def _store(self, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """One blocking store call off the loop, bounded by ``store_timeout_s``.

        A call that runs out is the store's fault (:class:`DependencyError`): the worker
        holds the event back. The thread itself cannot be stopped and finishes on its own;
        the writes it may still make are idempotent.
        """
        call = asyncio.to_thread(fn, *args, **kwargs)
        if self.store_timeout_s is None:
            return await call
        try:
            return await asyncio.wait_for(call, self.store_timeout_s)
        except TimeoutError as exc:
            raise DependencyError(
                f"the vector store did not answer within {self.store_timeout_s:g} s") from exc

    async def apply(self, event: DocumentEvent, *,
                    progress: Callable[[], Awaitable[None]] | None = None) -> ApplyResult:
        """Apply ``event``; raises :class:`ValidationError` when it can never apply."""
        record, revision = await self.registry.get(event.doc_id)
        if record is not None and event.version < record.version:
            return self._stale(event, f"version {event.version} < applied {record.version}")
        if event.event_type is EventType.DELETE:
            return await self._delete(event, record, revision)

        content = event.content if event.content is not None else (record and record.content)
        if content is None:
            raise ValidationError(
                f"UPDATE of {event.doc_id} has no content and no earlier content to reuse"
            )
        resolved = event.model_copy(update={"content": content})
        digest = resolved.content_hash()
        if record is not None and event.version == record.version:
            if record.content_hash == digest and record.state is not DocState.deleted:
                return ApplyResult(Outcome.duplicate, event.doc_id, event.version)
            return self._stale(event, f"version {event.version} already applied with other content")

        if self.max_content_bytes is not None:
            size = len(content.encode("utf-8", errors="replace"))
            if size > self.max_content_bytes:
                raise ValidationError(
                    f"content of {size} bytes (UTF-8) is over {self.max_content_bytes}")
        chunks, problem, repetition = await asyncio.to_thread(self._gate, event, content)
        if problem is not None:
            return await self._park(resolved, record, revision, DocState.quarantined, problem,
                                    digest)
        if not event.metadata.acl:  # absent or empty: nobody was granted it, so it waits
            return await self._park(resolved, record, revision, DocState.pending_acl,
                                    "no ACL in metadata" if event.metadata.acl is None
                                    else "empty ACL in metadata", digest)
        return await self._index(resolved, record, revision, digest, progress, chunks,
                                 repetition)

    def _gate(self, event: DocumentEvent, content: str
              ) -> tuple[list[Chunk], str | None, Repetition]:
        """Chunks, the quality gate's objection (or None), the repetition found (blocking)."""
        chunks = chunk_markdown(event.doc_id, content, title=event.metadata.title,
                                max_chars=self.max_chunk_chars)
        if self.max_chunks is not None and len(chunks) > self.max_chunks:
            raise ValidationError(too_many_chunks(len(chunks), self.max_chunks))
        problem = quality_problem(content, min_chars=self.min_content_chars)
        repetition = Repetition(None, frozenset())
        if problem is None:
            repetition = repetition_check(content, [c.text for c in chunks])
            problem = repetition.problem
        return chunks, problem, repetition

    def _stale(self, event: DocumentEvent, reason: str) -> ApplyResult:
        if self.metrics is not None:
            self.metrics.stale_discarded.inc()
        return ApplyResult(Outcome.stale, event.doc_id, event.version, reason=reason)

    async def _remove_all(self, record: DocRecord | None) -> int:
        if record is None or not record.chunk_ids:
            return 0
        for tier in Tier:
            await self._store(self.store.delete, tier, record.chunk_ids)
        return len(record.chunk_ids)

    async def _delete(self, event: DocumentEvent, record: DocRecord | None,
                      revision: int | None) -> ApplyResult:
        if record is not None and record.state is DocState.deleted:
            return ApplyResult(Outcome.duplicate, event.doc_id, event.version)
        removed = await self._remove_all(record)
        tombstone = DocRecord(
            doc_id=event.doc_id, version=event.version, state=DocState.deleted,
            metadata=record.metadata if record else {}, updated_at=event.timestamp,
        )
        await self.registry.put(tombstone, revision)
        return ApplyResult(Outcome.deleted, event.doc_id, event.version, removed=removed)

    async def _park(self, event: DocumentEvent, record: DocRecord | None, revision: int | None,
                    state: DocState, reason: str, digest: str) -> ApplyResult:
        """Keep the document out of the index (quarantined, or waiting for its ACL)."""
        removed = await self._remove_all(record)
        parked = DocRecord(
            doc_id=event.doc_id, version=event.version, content_hash=digest, state=state,
            content=event.content, metadata=event.metadata.model_dump(mode="json"),
            updated_at=event.timestamp, reason=reason,
        )
        await self.registry.put(parked, revision)
        outcome = Outcome.quarantined if state is DocState.quarantined else Outcome.pending_acl
        return ApplyResult(outcome, event.doc_id, event.version, removed=removed, reason=reason)

    async def _index(self, event: DocumentEvent, record: DocRecord | None, revision: int | None,
                     digest: str, progress: Callable[[], Awaitable[None]] | None,
                     all_chunks: list[Chunk], repetition: Repetition) -> ApplyResult:
        meta: DocumentMetadata = event.metadata
        assert event.content is not None
        title = meta.title or (all_chunks[0].heading.split(" > ")[0] if all_chunks
                               else event.doc_id)
        chunks = [c for c in all_chunks if c.position not in repetition.drop]
        if repetition.drop and self.metrics is not None:
            self.metrics.quality_dropped_chunks.inc(len(repetition.drop))
        metadatas = {
            c.chunk_id: chunk_metadata(
                doc_id=event.doc_id, version=event.version, title=title, url=meta.url,
                heading=c.heading, source=meta.source, acl=meta.acl or [],
                reviewed=meta.review_status.value == "reviewed", updated_at=event.timestamp,
                position=c.position,
            )
            for c in chunks
        }
        old_ids = set(record.chunk_ids) if record and record.state in _INDEXED else set()
        old_tier = Tier(record.state.value) if record and record.state in _INDEXED else None

        # Chunk ids are content-addressed: an id already in hot (an unchanged section, or
        # one upserted before a crash) keeps its vector; one in cold moves with its vector.
        ids = list(metadatas)
        in_hot = {s.chunk_id for s in await self._store(self.store.get, Tier.hot, ids)}
        in_cold = [cid for cid in ids if cid not in in_hot]
        moved_ids = {s.chunk_id for s in await self._store(self.store.get, Tier.cold,
                                                                    in_cold)}
        to_embed: list[Chunk] = [
            c for c in chunks if c.chunk_id not in in_hot and c.chunk_id not in moved_ids
        ]
        long_work = progress is not None and len(to_embed) > _LONG_WORK_CHUNKS
        # One bounded step at a time: embed a batch, write it, report progress.
        for start in range(0, len(to_embed), self.embed_batch):
            if long_work:
                assert progress is not None
                await progress()
            batch = to_embed[start:start + self.embed_batch]
            vectors = await asyncio.to_thread(self.embedder.embed, [c.embed_text for c in batch])
            await self._store(self.store.upsert, Tier.hot, [
                StoredChunk(c.chunk_id, c.text, metadatas[c.chunk_id], vectors[i])
                for i, c in enumerate(batch)
            ])
            if self.metrics is not None:
                self.metrics.chunks_embedded.inc(len(batch))
        moving = sorted(moved_ids)
        for start in range(0, len(moving), self.embed_batch):
            moved = await self._store(self.store.get, Tier.cold,
                                            moving[start:start + self.embed_batch],
                                            embeddings=True)
            await self._store(self.store.upsert, Tier.hot, [
                StoredChunk(s.chunk_id, s.text, metadatas[s.chunk_id], s.embedding)
                for s in moved
            ])
        refresh = [cid for cid in ids if cid in in_hot]
        await self._store(self.store.update_metadata, Tier.hot, refresh,
                                [metadatas[cid] for cid in refresh])
        stale = sorted(old_ids - set(ids))
        if stale:
            await self._store(self.store.delete, Tier.hot, stale)
        leave_cold = moved_ids | (old_ids if old_tier is Tier.cold else set())
        if leave_cold:
            await self._store(self.store.delete, Tier.cold, sorted(leave_cold))

        note = repetition.note
        applied = DocRecord(
            doc_id=event.doc_id, version=event.version, content_hash=digest, state=DocState.hot,
            chunk_ids=list(metadatas), content=event.content,
            metadata=meta.model_dump(mode="json"), updated_at=event.timestamp,
            indexed_at=datetime.now(UTC), reason=note,
        )
        await self.registry.put(applied, revision)
        return ApplyResult(Outcome.applied, event.doc_id, event.version, reembedded=len(to_embed),
                           kept=len(ids) - len(to_embed), removed=len(stale), reason=note)
