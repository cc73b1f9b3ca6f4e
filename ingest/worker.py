"""The JetStream ingest worker: a durable pull consumer applying document events.

Explicit acks, after the change is durable. A transient failure is ``nak``-ed with a
growing delay; an event that can never apply (invalid, or out of deliveries) is
``term``-ed and copied to the dead-letter subject ``docs.dlq`` with the reason. Long work
reports ``in_progress``. Flow control is JetStream's own: ``max_ack_pending`` and the fetch
batch. Every outcome is also announced on ``duet.results.<event_id>`` (core NATS), which
is how ``POST /v1/documents?wait=true`` learns that its change is retrievable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pydantic
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from core.errors import DuetError
from core.metrics import Metrics
from core.settings import Settings
from ingest.aging import AgingJob
from ingest.applier import Applier, ApplyResult, Outcome
from ingest.events import DocumentEvent
from ingest.registry import Registry
from ingest.store import Tier, VectorStore

__all__ = ["DLQ_SUBJECT", "IngestWorker", "ensure_stream", "result_subject"]

log = logging.getLogger("duet.ingest")

DLQ_SUBJECT = "docs.dlq"
_RESULTS_PREFIX = "duet.results"


def result_subject(event_id: str) -> str:
    """Where the outcome of an event is announced (the id made a safe subject token)."""
    return f"{_RESULTS_PREFIX}.{re.sub(r'[^A-Za-z0-9_-]', '_', event_id)}"


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the ``DUET_DOCS`` stream on ``docs.>``, or bring its config up to date."""
    config = StreamConfig(
        name=settings.stream_name, subjects=["docs.>"], storage=StorageType.FILE,
        duplicate_window=120.0, max_msg_size=settings.max_content_bytes + 64 * 1024,
    )
    try:
        await js.stream_info(settings.stream_name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:
            pass  # a concurrent process created it first
    await js.update_stream(config)


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
        self._stopping = asyncio.Event()

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
        next_aging = 0.0
        next_stats = 0.0
        fetch_failing = False
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if self.aging is not None and now >= next_aging:
                    await self._age()
                    next_aging = now + self.settings.aging_interval_s
                if now >= next_stats:
                    await self._stats(sub)
                    next_stats = now + 5.0
                try:
                    msgs = await sub.fetch(self.settings.fetch_batch, timeout=1.0)
                except TimeoutError:  # nats' own timeout and asyncio's: nothing to fetch
                    continue
                except Exception as exc:  # a reconnect in progress, a server hiccup: retry
                    if not fetch_failing:  # once per outage, not twice a second
                        log.warning("fetch failed; retrying until it works",
                                    extra={"reason": f"{type(exc).__name__}: {exc}"[:200]})
                    fetch_failing = True
                    await asyncio.sleep(0.5)
                    continue
                if fetch_failing:
                    fetch_failing = False
                    log.info("fetching events again")
                for msg in msgs:
                    try:
                        await self.handle(msg)
                    except Exception as exc:  # settling failed (connection lost): redelivery
                        # heals it; one line, no stack (an outage fails every event in hand)
                        log.warning("could not settle an event; it will be redelivered",
                                    extra={"reason": f"{type(exc).__name__}: {exc}"[:200]})
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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
        except DuetError as exc:
            if not exc.retryable:
                return await self._dead_letter(msg, event_id, event, exc.message)
            return await self._retry(msg, event_id, event, exc.message)
        except Exception as exc:  # a dependency failed in a way we did not name
            log.exception("ingest failure", extra={"doc_id": event.doc_id})
            return await self._retry(msg, event_id, event, f"{type(exc).__name__}: {exc}")

        await msg.ack()
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

    async def _retry(self, msg: Msg, event_id: str, event: DocumentEvent, reason: str
                     ) -> ApplyResult | None:
        delivered = msg.metadata.num_delivered
        if delivered >= self.settings.max_deliver:
            return await self._dead_letter(
                msg, event_id, event, f"gave up after {delivered} deliveries: {reason}")
        delay_s = min(0.25 * 2 ** (delivered - 1), 30.0)
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
