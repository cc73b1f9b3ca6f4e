"""Publishing document events to JetStream, and waiting for their outcome."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from core.errors import DependencyError, TimeoutError_
from ingest.events import DocumentEvent, event_subject
from ingest.worker import result_subject

__all__ = ["PublishedEvent", "publish_event", "publish_and_wait"]


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """What JetStream acknowledged."""

    event_id: str
    stream_seq: int
    duplicate: bool


async def publish_event(nc: NATS, event: DocumentEvent, *, event_id: str | None = None,
                        timeout_s: float = 5.0) -> PublishedEvent:
    """Publish with ``Nats-Msg-Id`` = event id (JetStream de-duplicates re-sends)."""
    event_id = event_id or uuid.uuid4().hex
    try:
        ack = await nc.jetstream().publish(
            event_subject(event), event.model_dump_json(exclude_none=True).encode(),
            headers={"Nats-Msg-Id": event_id}, timeout=timeout_s,
        )
    except Exception as exc:
        raise DependencyError(f"could not publish to JetStream: {exc}") from exc
    return PublishedEvent(event_id, ack.seq, bool(ack.duplicate))


async def publish_and_wait(nc: NATS, event: DocumentEvent, *, timeout_s: float,
                           event_id: str | None = None) -> tuple[PublishedEvent, dict[str, Any]]:
    """Publish and wait until the worker has handled the event; returns its outcome."""
    event_id = event_id or uuid.uuid4().hex
    sub = await nc.subscribe(result_subject(event_id), max_msgs=1)
    try:
        published = await publish_event(nc, event, event_id=event_id)
        try:
            msg = await sub.next_msg(timeout=timeout_s)
        except Exception as exc:
            raise TimeoutError_(f"event {event_id} not applied within {timeout_s:g}s") from exc
        return published, json.loads(msg.data)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


