"""The vector store: a hot and a cold collection behind one small interface.

Hot holds new and recently updated documents and is tuned for writes (small graph,
cheap inserts); cold holds stable documents and is tuned for recall. Every call blocks:
callers run them off the event loop. Embeddings are always passed in: a collection is
created with no embedding function, so Chroma never falls back to its downloading default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import chromadb
import numpy as np

from core.errors import DependencyError

__all__ = ["ChromaStore", "StoredChunk", "Tier", "VectorHit", "VectorStore"]

log = logging.getLogger("duet.ingest")


class Tier(StrEnum):
    """The two collections."""

    hot = "hot"
    cold = "cold"


#: HNSW settings: hot favours cheap writes, cold favours recall.
HNSW = {
    Tier.hot: {"space": "cosine", "ef_construction": 64, "max_neighbors": 12, "ef_search": 128,
               "sync_threshold": 256, "batch_size": 64},
    Tier.cold: {"space": "cosine", "ef_construction": 200, "max_neighbors": 32,
                "ef_search": 128, "sync_threshold": 1000, "batch_size": 256},
}


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk as stored: id, text, metadata and (when asked for) its vector."""

    chunk_id: str
    text: str
    metadata: dict[str, Any]
    embedding: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class VectorHit:
    """One nearest-neighbour result."""

    chunk_id: str
    tier: Tier
    similarity: float
    text: str
    metadata: dict[str, Any]


class VectorStore(Protocol):
    """What the knowledge base needs of a vector database (blocking calls)."""

    def upsert(self, tier: Tier, chunks: list[StoredChunk]) -> None:
        """Insert or replace chunks (embedding required); idempotent by chunk id."""
        ...

    def update_metadata(self, tier: Tier, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Replace the metadata of existing chunks, keeping their vectors."""
        ...

    def delete(self, tier: Tier, ids: list[str]) -> None:
        """Remove chunks; unknown ids are ignored."""
        ...

    def get(self, tier: Tier, ids: list[str], *, embeddings: bool = False) -> list[StoredChunk]:
        """The chunks of these ids that exist."""
        ...

    def query(self, tier: Tier, vector: np.ndarray, n: int,
              where: dict[str, Any] | None = None) -> list[VectorHit]:
        """The ``n`` nearest chunks, most similar first."""
        ...

    def count(self, tier: Tier) -> int:
        """How many chunks the collection holds."""
        ...

    def all_ids(self, tier: Tier) -> list[str]:
        """Every chunk id in the collection (for audits and tests)."""
        ...

    def by_documents(self, tier: Tier, doc_ids: list[str]) -> list[StoredChunk]:
        """Every chunk of these documents (prefetching, moves between tiers)."""
        ...

    def docs_changed_before(self, tier: Tier, cutoff_ts: float) -> set[str]:
        """Ids of documents with a chunk whose ``updated_at`` is before ``cutoff_ts``."""
        ...

    def probe(self) -> None:
        """Write and remove one record somewhere harmless; raises while writes fail."""
        ...


class ChromaStore:
    """:class:`VectorStore` on Chroma: embedded (a directory) or a Chroma server (a URL)."""

    def __init__(self, *, path: Path | None = None, url: str | None = None,
                 prefix: str = "duet", token: str | None = None) -> None:
        settings = chromadb.Settings(anonymized_telemetry=False, allow_reset=False)
        self._path = path
        self._prefix = prefix
        self._settings = settings
        try:
            if url:
                parsed = urlparse(url)
                self._client = chromadb.HttpClient(
                    host=parsed.hostname or "127.0.0.1", port=parsed.port or 8000,
                    ssl=parsed.scheme == "https", settings=settings,
                    # a server behind a token gate (docker-compose.yml: DUET_CHROMA_TOKEN)
                    headers={"Authorization": f"Bearer {token}"} if token else None,
                )
            elif path is not None:
                path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(path), settings=settings)
            else:
                raise ValueError("ChromaStore needs a path or a url")
            self._collections = self._open_collections()
        except ValueError:
            raise
        except Exception as exc:
            raise DependencyError(f"cannot open Chroma ({url or path}): {exc}") from exc
        self._probe_name = f"{prefix}_probe"
        # Chroma's embedded writer is single-threaded; serialise writes, let reads run.
        self._write_lock = threading.Lock()
        #: A write failed: embedded Chroma is reopened before the next write.
        self._write_failed = False

    def _open_collections(self) -> dict[Tier, Any]:
        collections = {}
        for tier in Tier:
            collection = self._client.get_or_create_collection(
                f"{self._prefix}_{tier.value}", embedding_function=None,
                configuration={"hnsw": HNSW[tier]},
            )
            # ef_search is the one HNSW setting that may change after creation.
            wanted = HNSW[tier]["ef_search"]
            current = ((collection.configuration or {}).get("hnsw") or {}).get("ef_search")
            if current is not None and current != wanted:
                collection.modify(configuration={"hnsw": {"ef_search": wanted}})
            collections[tier] = collection
        return collections

    def _reopen(self) -> None:
        """A fresh embedded client after a failed write (the caller holds the write lock).

        After "database or disk is full", embedded Chroma's next write on the same client
        blocks for good, even once space is back (chromadb 1.5); a new client does not.
        """
        from chromadb.api.shared_system_client import SharedSystemClient

        identifier = getattr(self._client, "_identifier", None)
        # Forget the cached system of this directory (not stopped: that may block as well).
        SharedSystemClient._identifier_to_system.pop(identifier, None)
        SharedSystemClient._identifier_to_refcount.pop(identifier, None)
        assert self._path is not None
        self._client = chromadb.PersistentClient(path=str(self._path), settings=self._settings)
        self._collections = self._open_collections()
        log.debug("reopened embedded Chroma after a failed write",
                 extra={"path": str(self._path)})

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the write lock; reopen first after a failed write; remember a failure."""
        with self._write_lock:
            if self._write_failed and self._path is not None:
                self._reopen()
            self._write_failed = False
            try:
                yield
            except BaseException:
                self._write_failed = True
                raise

    def upsert(self, tier: Tier, chunks: list[StoredChunk]) -> None:
        if not chunks:
            return
        with self._writing():
            self._collections[tier].upsert(
                ids=[c.chunk_id for c in chunks],
                embeddings=np.stack([c.embedding for c in chunks]),
                documents=[c.text for c in chunks],
                metadatas=[c.metadata for c in chunks],
            )

    def update_metadata(self, tier: Tier, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        if not ids:
            return
        with self._writing():
            self._collections[tier].update(ids=ids, metadatas=metadatas)

    def delete(self, tier: Tier, ids: list[str]) -> None:
        if not ids:
            return
        with self._writing():
            self._collections[tier].delete(ids=ids)

    def get(self, tier: Tier, ids: list[str], *, embeddings: bool = False) -> list[StoredChunk]:
        if not ids:
            return []
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        got = self._collections[tier].get(ids=ids, include=include)
        vectors = got.get("embeddings") if embeddings else None
        return [
            StoredChunk(
                chunk_id=cid, text=got["documents"][i] or "", metadata=dict(got["metadatas"][i]),
                embedding=np.asarray(vectors[i], dtype=np.float32) if vectors is not None else None,
            )
            for i, cid in enumerate(got["ids"])
        ]

    def query(self, tier: Tier, vector: np.ndarray, n: int,
              where: dict[str, Any] | None = None) -> list[VectorHit]:
        collection = self._collections[tier]
        res = collection.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)], n_results=n, where=where,
            include=["documents", "metadatas", "distances"],
        )
        return [
            VectorHit(chunk_id=cid, tier=tier, similarity=1.0 - float(dist),
                      text=doc or "", metadata=dict(meta))
            for cid, dist, doc, meta in zip(
                res["ids"][0], res["distances"][0], res["documents"][0], res["metadatas"][0],
                strict=True,
            )
        ]

    def count(self, tier: Tier) -> int:
        return self._collections[tier].count()

    def probe(self) -> None:
        if self._path is not None:
            # The directory first, without Chroma: while it cannot take a small file, a
            # Chroma write fails too, and each failed write costs a reopened client.
            marker = self._path / ".duet-probe"
            try:
                with marker.open("wb") as f:
                    f.write(b"\0" * 65536)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                with contextlib.suppress(OSError):
                    marker.unlink()
        # A collection of its own, never searched: one record written, then removed.
        with self._writing():
            probe = self._client.get_or_create_collection(
                self._probe_name, embedding_function=None,
                configuration={"hnsw": {"space": "ip"}})
            probe.upsert(ids=["probe"], embeddings=np.ones((1, 2), dtype=np.float32),
                         documents=["probe"])
            probe.delete(ids=["probe"])

    def all_ids(self, tier: Tier) -> list[str]:
        return list(self._collections[tier].get(include=[])["ids"])

    def docs_changed_before(self, tier: Tier, cutoff_ts: float) -> set[str]:
        got = self._collections[tier].get(
            where={"updated_at": {"$lt": cutoff_ts}}, include=["metadatas"]
        )
        return {str(m["doc_id"]) for m in got["metadatas"]}

    def by_documents(self, tier: Tier, doc_ids: list[str]) -> list[StoredChunk]:
        if not doc_ids:
            return []
        got = self._collections[tier].get(
            where={"doc_id": {"$in": list(doc_ids)}}, include=["documents", "metadatas"]
        )
        return [
            StoredChunk(chunk_id=cid, text=got["documents"][i] or "",
                        metadata=dict(got["metadatas"][i]))
            for i, cid in enumerate(got["ids"])
        ]
