"""The document registry: doc_id → version, hash, chunk ids, tier, timestamps.

It lives in a JetStream key-value bucket, so a restarted or a second worker (and the
gateway answering ``GET /v1/documents/{id}``) see the same state. Writes are
compare-and-set on the key's revision: a concurrent writer gets :class:`ConflictError`.
The bucket also holds ``meta.as_of``, the timestamp of the newest event applied.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from core.errors import ConflictError
from core.streams import ensure_kv

__all__ = ["DocRecord", "DocState", "Registry"]

_AS_OF_KEY = "meta.as_of"


class DocState(StrEnum):
    """Where a document stands; only hot and cold are retrievable."""

    hot = "hot"
    cold = "cold"
    pending_acl = "pending_acl"
    quarantined = "quarantined"
    deleted = "deleted"


class DocRecord(BaseModel):
    """The registry entry of one document."""

    doc_id: str = Field(description="Document id.")
    version: int = Field(description="Version last applied (or discarded-to).")
    content_hash: str | None = Field(None, description="Hash of content and metadata applied.")
    state: DocState = Field(description="hot, cold, pending_acl, quarantined or deleted.")
    chunk_ids: list[str] = Field(default_factory=list, description="Chunks in the state's tier.")
    content: str | None = Field(None, description="Markdown applied (kept for re-indexing).")
    metadata: dict = Field(default_factory=dict, description="Metadata of the applied event.")
    updated_at: datetime = Field(description="Timestamp of the event applied.")
    indexed_at: datetime | None = Field(None, description="When it became retrievable.")
    reason: str | None = Field(
        None, description="Why it is quarantined or waits, or what the quality gate dropped.")

    @property
    def key(self) -> str:
        """Its key in the bucket."""
        return f"doc.{self.doc_id}"


class Registry:
    """Typed access to the registry bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, *, max_value_bytes: int,
                   max_bytes: int = 2 * 1024**3) -> Registry:
        """Open the bucket, creating it on first use (its limits kept up to date)."""
        return cls(await ensure_kv(js, KeyValueConfig(
            bucket=bucket, history=1, storage=StorageType.FILE,
            max_value_size=max_value_bytes, max_bytes=max_bytes)))

    async def get(self, doc_id: str) -> tuple[DocRecord | None, int | None]:
        """The record and its revision, or (None, None)."""
        try:
            entry = await self._kv.get(f"doc.{doc_id}")
        except KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, None
        return DocRecord.model_validate_json(entry.value), entry.revision

    async def put(self, record: DocRecord, revision: int | None) -> int:
        """Write if the key is still at ``revision`` (None: must not exist)."""
        data = record.model_dump_json().encode()
        try:
            if revision is None:
                return await self._kv.create(record.key, data)
            return await self._kv.update(record.key, data, last=revision)
        except KeyWrongLastSequenceError as exc:
            raise ConflictError(f"registry entry of {record.doc_id} changed meanwhile") from exc

    async def doc_ids(self) -> list[str]:
        """Every document id the registry knows."""
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return []
        return sorted(k.removeprefix("doc.") for k in keys if k.startswith("doc."))

    async def as_of(self) -> datetime | None:
        """Timestamp of the newest event applied."""
        try:
            entry = await self._kv.get(_AS_OF_KEY)
        except KeyNotFoundError:
            return None
        return datetime.fromisoformat(entry.value.decode()) if entry.value else None

    async def advance_as_of(self, ts: datetime) -> datetime:
        """Raise ``meta.as_of`` to ``ts`` if that is newer; returns the value now stored."""
        ts = ts.astimezone(UTC)
        for _ in range(10):
            try:
                entry = await self._kv.get(_AS_OF_KEY)
                current = datetime.fromisoformat(entry.value.decode()) if entry.value else None
                revision: int | None = entry.revision
            except KeyNotFoundError:
                current, revision = None, None
            if current is not None and current >= ts:
                return current
            try:
                if revision is None:
                    await self._kv.create(_AS_OF_KEY, ts.isoformat().encode())
                else:
                    await self._kv.update(_AS_OF_KEY, ts.isoformat().encode(), last=revision)
                return ts
            except KeyWrongLastSequenceError:
                continue
        raise ConflictError("as_of kept changing")

    def watch_documents(self):
        """A KV watcher of every document key, keys and revisions only."""
        return self._kv.watch("doc.>", meta_only=True)

    def watch_as_of(self):
        """A KV watcher of ``meta.as_of`` (the gateway keeps a live copy)."""
        return self._kv.watch(_AS_OF_KEY)
