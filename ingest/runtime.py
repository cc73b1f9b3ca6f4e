"""Assembling the knowledge base of one process from :class:`Settings`.

``KnowledgeRuntime`` connects to NATS, makes sure the stream and the registry bucket
exist, opens the Chroma store and the embedding model, and (optionally) runs the ingest
worker. Its background work (the worker, the registry watchers) runs on a
:class:`~core.tasks.TaskBoard` that ``/healthz`` reports. The gateway and
``duet ingest-worker`` both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from core.errors import DependencyError
from core.metrics import Metrics
from core.natsd import close_nats, connect, connection_log
from core.settings import CONFIGS_DIR, Settings
from core.tasks import TaskBoard
from ingest.aging import AgingJob
from ingest.applier import Applier
from ingest.embeddings import Embedder, OnnxEmbedder
from ingest.freshness import FreshnessProfiles
from ingest.kb import KnowledgeBase
from ingest.registry import Registry
from ingest.store import ChromaStore, VectorStore
from ingest.worker import IngestWorker, ensure_stream

__all__ = ["KnowledgeRuntime", "build_embedder"]

log = logging.getLogger("duet.ingest")

#: how long a KV watch waits for an update before checking for a reconnection, and the
#: pause before opening a failed watch again.
_WATCH_RETRY_S = 1.0


def build_embedder(settings: Settings) -> Embedder:
    """The configured embedding model (default: the bundled all-MiniLM-L6-v2)."""
    return OnnxEmbedder(settings.embedding_model, settings.embedding_tokenizer,
                        threads=settings.embedding_threads,
                        max_tokens=settings.embedding_max_tokens)


class KnowledgeRuntime:
    """NATS, registry, store, embedder, query API and (optionally) the worker, as one unit."""

    def __init__(self, settings: Settings, nats_url: str, *, metrics: Metrics,
                 run_worker: bool, embedder: Embedder | None = None,
                 store: VectorStore | None = None) -> None:
        self.settings = settings
        self.nats_url = nats_url
        self.metrics = metrics
        self.run_worker = run_worker
        self._embedder = embedder
        self._store = store
        self.nc: NATS | None = None
        self.registry: Registry | None = None
        self.kb: KnowledgeBase | None = None
        self.worker: IngestWorker | None = None
        self._as_of: datetime | None = None
        #: The runtime's background tasks (and probes other components add).
        self.tasks = TaskBoard()

    @property
    def as_of(self) -> datetime | None:
        """Newest applied event, from the in-process worker or the registry watch."""
        if self.worker is not None and self.worker.as_of is not None:
            return self.worker.as_of
        return self._as_of

    @property
    def worker_alive(self) -> bool:
        """Whether the in-process worker task is running."""
        task = self.tasks.task("ingest-worker")
        return task is not None and not task.done()

    async def __aenter__(self) -> KnowledgeRuntime:
        await self.tasks.__aenter__()
        try:
            return await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise

    async def _start(self) -> KnowledgeRuntime:
        s = self.settings
        self.nc = await connect(self.nats_url, name="duet")
        js = self.nc.jetstream()
        await ensure_stream(js, s)
        self.registry = await Registry.open(js, s.registry_bucket,
                                            max_value_bytes=2 * s.max_content_bytes + 65536,
                                            max_bytes=s.registry_max_bytes)
        self._as_of = await self.registry.as_of()
        embedder = self._embedder or await asyncio.to_thread(build_embedder, s)
        store = self._store or await asyncio.to_thread(
            lambda: ChromaStore(path=None if s.chroma_url else s.chroma_dir, url=s.chroma_url,
                                prefix=s.collection_prefix, token=s.chroma_token))
        profiles = FreshnessProfiles.load(CONFIGS_DIR / "freshness.yaml")
        self.kb = KnowledgeBase(store, embedder, profiles, as_of=lambda: self.as_of,
                                metrics=self.metrics, exact_max_chunks=s.exact_search_max_chunks,
                                max_chunks_per_doc=s.search_max_chunks_per_doc)
        await asyncio.to_thread(self.kb.topics.rebuild)
        self.tasks.start("as-of-watch", self._watch_as_of())
        self.tasks.start("doc-watch", self._watch_documents())
        if self.run_worker:
            applier = Applier(store, embedder, self.registry,
                              min_content_chars=s.min_content_chars, metrics=self.metrics,
                              max_chunks=s.max_document_chunks,
                              max_content_bytes=s.max_content_bytes,
                              embed_batch=s.embed_batch_chunks,
                              store_timeout_s=s.store_timeout_s)
            aging = AgingJob(store, self.registry, s.hot_max_age, metrics=self.metrics)
            # The registry watch reports every writer's changes, a moment later; the
            # in-process worker also reports its own before announcing them, so a client
            # told "applied" never gets an answer from a cache older than the change.
            self.worker = IngestWorker(self.nc, s, applier, store, self.registry, self.metrics,
                                       aging=aging, on_change=self.kb.note_change)
            task = self.tasks.start("ingest-worker", self.worker.run())
            ready = asyncio.create_task(self.worker.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if task.done():
                error = self.tasks.report()["ingest-worker"].error
                raise DependencyError(f"the ingest worker could not start: {error}")
        return self

    async def _watch_as_of(self) -> None:
        assert self.registry is not None
        registry = self.registry

        def take(entry: Any) -> None:
            if entry.value:
                with contextlib.suppress(ValueError):
                    self._as_of = datetime.fromisoformat(entry.value.decode())

        await self._watch_forever("as-of watch", registry.watch_as_of, take)

    async def _watch_documents(self) -> None:
        """Tell the query API which documents change (caches of them go stale)."""
        assert self.registry is not None and self.kb is not None
        kb = self.kb
        await self._watch_forever("document watch", self.registry.watch_documents,
                                  lambda entry: kb.note_change(entry.key.removeprefix("doc.")))

    async def _watch_forever(self, name: str, open_watch: Callable[[], Awaitable[Any]],
                             take: Callable[[Any], None]) -> None:
        """Follow a KV watch for ever: opened again after an error or a reconnection.

        A watch is an ordered consumer in the server's memory, lost when the server
        restarts; nats-py would notice only after missed heartbeats, so the watch is opened
        again as soon as the connection is back. Failures are logged once per outage.
        """
        assert self.nc is not None
        conn = connection_log(self.nc)
        failing = False
        while True:
            generation = conn.generation if conn is not None else 0
            try:
                watcher = await open_watch()
            except Exception as exc:
                if not failing:
                    failing = True
                    log.warning("%s failed; opening it again", name,
                                extra={"reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
                await asyncio.sleep(_WATCH_RETRY_S)
                continue
            if failing:
                failing = False
                log.info("%s resumed", name)
            try:
                while conn is None or conn.generation == generation:
                    try:
                        entry = await watcher.updates(timeout=_WATCH_RETRY_S)
                    except TimeoutError:
                        continue
                    if isinstance(entry, KeyValue.Entry):  # not the end-of-replay marker
                        take(entry)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

    async def __aexit__(self, *exc: object) -> None:
        worker = self.tasks.task("ingest-worker")
        if self.worker is not None and worker is not None:
            self.worker.stop()  # a flag: the event in hand is finished and settled first
            await asyncio.wait({worker}, timeout=5.0)
        await self.tasks.__aexit__(None, None, None)
        if self.kb is not None:
            self.kb.topics.close()
        if self.nc is not None:
            await close_nats(self.nc)
