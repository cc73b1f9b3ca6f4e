"""The JetStream ingest worker: a durable pull consumer applying document events.

Explicit acks, after the change is durable. Long work reports ``in_progress``. Flow
control is JetStream's own: ``max_ack_pending`` and the fetch batch. Every outcome is also
announced on ``duet.results.<event_id>`` (core NATS), which is how
``POST /v1/documents?wait=true`` learns that its change is retrievable.

Failures are sorted by whose fault they are (:mod:`ingest.faults`):

* the event's own, permanent (invalid, over a cap): ``term`` and a copy on the dead-letter
  subject ``docs.dlq`` with the reason;
* the event's own, transient (an error of unknown kind): ``nak`` with a growing delay, and
  the dead-letter subject after ``max_deliver`` such failures;
* a dependency's (disk full, read-only store, store or NATS unreachable): ``nak`` with a
  growing delay (at most ``store_fault_max_backoff_s``), never dead-lettered for it. The
  worker then stops fetching and probes the store every ``store_probe_interval_s`` until a
  probe succeeds; :attr:`IngestWorker.store_fault` says what is wrong meanwhile (and
  ``/healthz`` shows it). The fault is logged once when it starts and once when it clears.

Two lanes keep small documents from waiting behind large ones: an event over
``large_document_bytes`` is handed to a bounded background lane (one at a time, in order)
while the fetch loop goes on with the small ones. Per-document order holds: an event for a
document the background lane holds is handed back (``nak``) until that one is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

import pydantic
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from core.errors import DuetError
from core.metrics import Metrics
from core.settings import Settings
from core.streams import ensure_stream as ensure_stream_config
from ingest.aging import AgingJob
from ingest.applier import Applier, ApplyResult, Outcome
from ingest.events import DocumentEvent
from ingest.faults import dependency_fault
from ingest.registry import Registry
from ingest.store import Tier, VectorStore

__all__ = ["DLQ_SUBJECT", "IngestWorker", "ensure_stream", "result_subject"]

log = logging.getLogger("duet.ingest")

DLQ_SUBJECT = "docs.dlq"
_RESULTS_PREFIX = "duet.results"
#: Events whose own failures are remembered at once (the oldest are forgotten first).
_FAILURES_KEPT = 10_000
#: Redelivery delay of an event handed back because its document is busy or the lane full.
_BUSY_DELAY_S = 1.0
#: Longest wait for one store probe.
_PROBE_TIMEOUT_S = 10.0


def result_subject(event_id: str) -> str:
    """Where the outcome of an event is announced (the id made a safe subject token)."""
    return f"{_RESULTS_PREFIX}.{re.sub(r'[^A-Za-z0-9_-]', '_', event_id)}"


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the ``DUET_DOCS`` stream on ``docs.>``, or bring its config up to date.

    Every event in it is accepted work, so when it is full it refuses new events (the
    document API says so) rather than dropping old ones; applied events age out.
    """
    await ensure_stream_config(js, StreamConfig(
        name=settings.stream_name, subjects=["docs.>"], storage=StorageType.FILE,
        duplicate_window=120.0, max_msg_size=settings.max_content_bytes + 64 * 1024,
        max_bytes=settings.docs_stream_max_bytes,
        max_age=settings.docs_stream_max_age.total_seconds(), discard=DiscardPolicy.NEW,
    ))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return None


def _trim_heap() -> None:
    """Give the heap freed by a large document back to the OS (blocking, milliseconds).

    glibc keeps freed memory in its per-thread arenas (the embedding and store calls run
    in worker threads): without a trim, RSS stays ~130 MB higher after one 120 KB document.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _doc_id_of(msg: Msg) -> str | None:
    """The ``doc_id`` of an event, without validating it (None when there is none)."""
    try:
        body = json.loads(msg.data)
    except ValueError:
        return None
    doc_id = body.get("doc_id") if isinstance(body, dict) else None
    return doc_id if isinstance(doc_id, str) else None


class IngestWorker:
    """Consumes ``docs.>`` and applies every event through an :class:`Applier`."""

    def __init__(self, nc: NATS, settings: Settings, applier: Applier, store: VectorStore,
                 registry: Registry, metrics: Metrics, *, aging: AgingJob | None = None,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self.applier = applier
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.aging = aging
        self.on_change = on_change
        self.ready = asyncio.Event()
        self.as_of: datetime | None = None
        #: What is wrong while writes fail (disk full, read-only, unreachable), else None.
        #: The worker fetches nothing meanwhile; ``/healthz`` reports it.
        self.store_fault: str | None = None
        #: When the current store fault began (None while there is none).
        self.store_fault_since: datetime | None = None
        self._stopping = asyncio.Event()
        self._fetch_failing = False
        self._probe_task: asyncio.Task[None] | None = None
        #: stream sequence → failures that were the event's own (what ``max_deliver`` counts).
        self._failures: OrderedDict[int, int] = OrderedDict()
        #: The background lane of large events, and the documents it holds.
        self._large: asyncio.Queue[tuple[Msg, str | None] | None] = asyncio.Queue(
            maxsize=settings.large_lane_events + 1)
        self._large_docs: Counter[str | None] = Counter()
        #: stream sequence → the large events held (queued or in work), kept alive.
        self._held: dict[int, Msg] = {}

    def stop(self) -> None:
        """Finish the event in hand and the current fetch, then return from :meth:`run`.

        (nats-py's ``fetch`` can swallow a cancellation, so the loop checks a flag.)
        """
        self._stopping.set()

    async def run(self) -> None:
        """Consume until cancelled; the pull subscription is drained on the way out."""
        await ensure_stream(self.js, self.settings)
        self.as_of = await self.registry.as_of()
        sub = await self.js.pull_subscribe(
            "docs.>", durable=self.settings.consumer_name, stream=self.settings.stream_name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=self.settings.max_ack_pending, ack_wait=self.settings.ack_wait_s,
                max_deliver=-1,
            ),
        )
        self.ready.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._large_lane(), name="ingest-large-lane")
                beat = tg.create_task(self._heartbeat(), name="ingest-large-heartbeat")
                try:
                    await self._consume(sub)
                finally:
                    beat.cancel()
                    await self._close_lane()
        finally:
            if self._probe_task is not None:  # a probe of a hung store: retrieve its end later
                self._probe_task.add_done_callback(
                    lambda t: t.cancelled() or t.exception())
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _consume(self, sub: JetStreamContext.PullSubscription) -> None:
        """The fetch loop (the small lane): pauses while the store is at fault."""
        next_aging = 0.0
        next_stats = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_stats:
                await self._stats(sub)
                next_stats = now + 5.0
            if self.store_fault is not None:
                await self._probe_store()
                continue
            if self.aging is not None and now >= next_aging:
                await self._age()
                next_aging = now + self.settings.aging_interval_s
            try:
                msgs = await sub.fetch(self.settings.fetch_batch, timeout=1.0)
            except TimeoutError:  # nats' own timeout and asyncio's: nothing to fetch
                continue
            except Exception as exc:  # a reconnect in progress, a server hiccup: retry shortly
                if not self._fetch_failing:
                    self._fetch_failing = True
                    log.warning("fetch failed; retrying until it works",
                                extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(0.5)
                continue
            if self._fetch_failing:
                self._fetch_failing = False
                log.info("fetch works again")
            for msg in msgs:
                try:
                    await self._dispatch(msg)
                except Exception as exc:  # settling failed (connection lost): redelivery
                    # heals it; one line, no stack (an outage fails every event in hand)
                    log.warning("could not settle an event; it will be redelivered",
                                extra={"reason": f"{type(exc).__name__}: {exc}"[:200]})

    async def _dispatch(self, msg: Msg) -> None:
        """Apply a small event now, hand a large one to the background lane."""
        if self.store_fault is not None:  # an earlier event of this batch found the fault
            await self._hold(msg, None, self.store_fault)
            return
        large = (msg.subject != DLQ_SUBJECT
                 and len(msg.data) > self.settings.large_document_bytes)
        doc_id = _doc_id_of(msg) if msg.subject != DLQ_SUBJECT else None
        if large:
            seq = msg.metadata.sequence.stream
            if seq in self._held:  # redelivered while held: the held one will settle it
                return
            if self._large_docs.total() >= self.settings.large_lane_events:
                await msg.nak(delay=_BUSY_DELAY_S)
                return
            self._large_docs[doc_id] += 1
            self._held[seq] = msg
            self.metrics.large_lane_events.set(self._large_docs.total())
            self._large.put_nowait((msg, doc_id))
            return
        if doc_id is not None and self._large_docs[doc_id] > 0:
            # An earlier version is still in the background lane: this one waits for it.
            await msg.nak(delay=_BUSY_DELAY_S)
            return
        await self.handle(msg)

    async def _large_lane(self) -> None:
        """Applies large events one at a time, in the order they were fetched."""
        while True:
            item = await self._large.get()
            if item is None:
                return
            msg, doc_id = item
            try:
                if self.store_fault is not None:
                    await self._hold(msg, None, self.store_fault)
                else:
                    await self.handle(msg)
            except Exception:  # settling failed (connection lost): redelivery heals it
                log.warning("could not settle a large event; it will be redelivered",
                            exc_info=True)
            finally:
                self._release(msg, doc_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_trim_heap)

    async def _heartbeat(self) -> None:
        """Tells JetStream the held large events are being worked on (no redelivery while
        one waits in the lane behind another)."""
        interval_s = max(self.settings.ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval_s)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    def _release(self, msg: Msg, doc_id: str | None) -> None:
        self._held.pop(msg.metadata.sequence.stream, None)
        self._large_docs[doc_id] -= 1
        if self._large_docs[doc_id] <= 0:
            del self._large_docs[doc_id]
        self.metrics.large_lane_events.set(self._large_docs.total())

    async def _close_lane(self) -> None:
        """Hand back the large events not started, then let the lane finish the one in hand."""
        while True:
            try:
                item = self._large.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is None:
                continue
            msg, doc_id = item
            self._release(msg, doc_id)
            with contextlib.suppress(Exception):
                await msg.nak()
        self._large.put_nowait(None)

    async def _probe_store(self) -> None:
        """While paused: wait a probe interval, probe the store, resume when it works."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.settings.store_probe_interval_s)
        if self._stopping.is_set():
            return
        probe = getattr(self.applier.store, "probe", None)
        if probe is not None:
            # One probe thread at a time: a probe stuck in a hung store is waited for, not
            # joined by another one every interval.
            if self._probe_task is None or self._probe_task.done():
                self._probe_task = asyncio.create_task(asyncio.to_thread(probe))
            task = self._probe_task
            await asyncio.wait({task}, timeout=_PROBE_TIMEOUT_S)
            if not task.done():
                self.store_fault = "the vector store does not answer"
                return
            self._probe_task = None
            exc = task.exception()
            if exc is not None:  # still at fault: say what now, quietly
                self.store_fault = (dependency_fault(exc)
                                    or f"{type(exc).__name__}: {exc}")[:200]
                return
        # Without a probe, the next event is the probe: a fault pauses again.
        self._clear_fault()

    def _set_fault(self, fault: str) -> None:
        if self.store_fault is None:
            self.store_fault_since = datetime.now(UTC)
            self.metrics.store_fault.set(1)
            log.warning("vector store fault: %s; ingest paused, probing every %g s", fault,
                        self.settings.store_probe_interval_s, extra={"fault": fault})
        self.store_fault = fault

    def _clear_fault(self) -> None:
        if self.store_fault is None:
            return
        since = self.store_fault_since
        down_s = (datetime.now(UTC) - since).total_seconds() if since else 0.0
        log.info("vector store works again after %.1f s; ingest resumes", down_s,
                 extra={"fault": self.store_fault, "down_s": round(down_s, 1)})
        self.store_fault = None
        self.store_fault_since = None
        self.metrics.store_fault.set(0)

    async def _age(self) -> None:
        assert self.aging is not None
        try:
            moved = await self.aging.run_once()
        except Exception:  # aging retries next pass; ingest must go on
            log.exception("aging pass failed")
            return
        if moved:
            log.info("aged documents to cold", extra={"count": moved})

    async def _stats(self, sub: JetStreamContext.PullSubscription) -> None:
        with contextlib.suppress(Exception):
            info = await sub.consumer_info()
            self.metrics.consumer_pending.set(info.num_pending)
        with contextlib.suppress(Exception):
            for tier in Tier:
                self.metrics.collection_chunks.labels(tier.value).set(
                    await asyncio.to_thread(self.store.count, tier))
        if self.as_of is not None:
            self.metrics.as_of_age.set((datetime.now(UTC) - self.as_of).total_seconds())

    async def handle(self, msg: Msg) -> ApplyResult | None:
        """Apply one delivered message and settle it (ack, nak or term)."""
        if msg.subject == DLQ_SUBJECT:
            await msg.ack()
            return None
        meta = msg.metadata
        event_id = (msg.headers or {}).get("Nats-Msg-Id") or f"seq-{meta.sequence.stream}"
        try:
            event = DocumentEvent.model_validate_json(msg.data)
        except pydantic.ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()
            )
            return await self._dead_letter(msg, event_id, None, f"invalid event: {reason}")

        try:
            result = await self.applier.apply(event, progress=msg.in_progress)
        except Exception as exc:
            if isinstance(exc, DuetError) and not exc.retryable:
                return await self._dead_letter(msg, event_id, event, exc.message)
            fault = dependency_fault(exc)
            if fault is not None:  # the store's (or NATS') fault, not the event's
                return await self._hold(msg, event, fault)
            if isinstance(exc, DuetError):
                return await self._retry(msg, event_id, event, exc.message)
            log.exception("ingest failure", extra={"doc_id": event.doc_id})
            return await self._retry(msg, event_id, event, f"{type(exc).__name__}: {exc}")

        await msg.ack()
        self._failures.pop(meta.sequence.stream, None)
        if result.changed_index and self.on_change is not None:
            self.on_change(event.doc_id)
        if result.changed_index:
            now = datetime.now(UTC)
            self.metrics.ingest_lag.observe(max((now - meta.timestamp).total_seconds(), 0.0))
            self.metrics.event_age.observe(max((now - event.timestamp).total_seconds(), 0.0))
            if self.as_of is None or event.timestamp > self.as_of:
                self.as_of = await self.registry.advance_as_of(event.timestamp)
        self.metrics.ingest_events.labels(result.outcome.value).inc()
        log.info("event %s", result.outcome.value, extra={
            "doc_id": event.doc_id, "version": event.version, "event_id": event_id,
            "reembedded": result.reembedded, "kept": result.kept, "removed": result.removed,
        })
        await self._announce(event_id, result, meta.timestamp)
        return result

    async def _hold(self, msg: Msg, event: DocumentEvent | None, fault: str) -> None:
        """Hand the event back for a dependency's fault: later, never to the dead letters."""
        self._set_fault(fault)
        delivered = msg.metadata.num_delivered
        delay_s = min(0.5 * 2 ** min(delivered - 1, 16), self.settings.store_fault_max_backoff_s)
        self.metrics.store_fault_holds.inc()
        log.debug("event held back by a store fault", extra={
            "doc_id": event.doc_id if event else None, "delay_s": delay_s, "fault": fault})
        await msg.nak(delay=delay_s)

    async def _retry(self, msg: Msg, event_id: str, event: DocumentEvent, reason: str
                     ) -> ApplyResult | None:
        seq = msg.metadata.sequence.stream
        failures = self._failures.pop(seq, 0) + 1
        self._failures[seq] = failures
        while len(self._failures) > _FAILURES_KEPT:
            self._failures.popitem(last=False)
        if failures >= self.settings.max_deliver:
            return await self._dead_letter(
                msg, event_id, event, f"gave up after {failures} deliveries: {reason}")
        delay_s = min(0.25 * 2 ** (failures - 1), 30.0)
        log.warning("transient ingest failure, retrying", extra={
            "doc_id": event.doc_id, "delay_s": delay_s, "reason": reason})
        await msg.nak(delay=delay_s)
        return None

    async def _dead_letter(self, msg: Msg, event_id: str, event: DocumentEvent | None,
                           reason: str) -> ApplyResult:
        body = {
            "reason": reason, "event_id": event_id, "subject": msg.subject,
            "stream_seq": msg.metadata.sequence.stream,
            "failed_at": datetime.now(UTC).isoformat(),
            "data": msg.data.decode("utf-8", errors="replace"),
        }
        await self.js.publish(
            DLQ_SUBJECT, json.dumps(body).encode(),
            headers={"Nats-Msg-Id": f"dlq-{event_id}", "Duet-Reason": reason[:1000]},
        )
        await msg.term()
        self._failures.pop(msg.metadata.sequence.stream, None)
        self.metrics.dead_letters.inc()
        self.metrics.ingest_events.labels(Outcome.dead_letter.value).inc()
        log.warning("dead-lettered event", extra={"event_id": event_id, "reason": reason})
        result = ApplyResult(Outcome.dead_letter, event.doc_id if event else "",
                             event.version if event else -1, reason=reason)
        await self._announce(event_id, result, msg.metadata.timestamp)
        return result

    async def _announce(self, event_id: str, result: ApplyResult, published: datetime) -> None:
        body = {
            "event_id": event_id, "outcome": result.outcome.value, "doc_id": result.doc_id,
            "version": result.version, "reason": result.reason,
            "lag_ms": round((datetime.now(UTC) - published).total_seconds() * 1000, 3),
        }
        with contextlib.suppress(Exception):
            await self.nc.publish(result_subject(event_id), json.dumps(body).encode())
