"""Publishing document events to JetStream, and waiting for their outcome.

Failures are named: a message over the server's ``max_payload`` or the stream's
``max_msg_size`` is :class:`PayloadTooLargeError` (the caller's fault, not an outage); NATS
unreachable is :class:`DependencyError` at once, without waiting out a timeout; no outcome
in time is :class:`TimeoutError_`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import MaxPayloadError
from nats.js.errors import APIError

from core.errors import DependencyError, PayloadTooLargeError, TimeoutError_
from ingest.events import DocumentEvent, event_subject
from ingest.worker import result_subject

__all__ = ["PublishedEvent", "encode_event", "publish_and_wait", "publish_event"]

#: JetStream's error code for a message over the stream's ``max_msg_size``.
_JS_MESSAGE_TOO_LARGE = 10054
_T = TypeVar("_T")
#: room left for the ``Nats-Msg-Id`` header when checking against ``max_payload``.
_HEADER_ROOM = 256


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """What JetStream acknowledged."""

    event_id: str
    stream_seq: int
    duplicate: bool


def encode_event(event: DocumentEvent) -> bytes:
    """The bytes published for an event (UTF-8 JSON, absent fields left out)."""
    return event.model_dump_json(exclude_none=True).encode()


def _require_connected(nc: NATS) -> None:
    if not nc.is_connected:
        raise DependencyError("the document queue (NATS) is unavailable")


async def _unless_disconnected(nc: NATS, call: Coroutine[Any, Any, _T],
                               every_s: float = 0.05) -> _T:
    """``call``, given up as soon as the connection is lost: an acknowledgment in flight
    when the server went away would otherwise be awaited until its timeout (5 s). Whether
    the server stored the event is then unknown; a retry is safe (versions are
    idempotent)."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every_s)
            if done:
                return task.result()
            if not nc.is_connected:
                raise DependencyError("the document queue (NATS) went away during the publish")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def publish_event(nc: NATS, event: DocumentEvent, *, event_id: str | None = None,
                        timeout_s: float = 5.0) -> PublishedEvent:
    """Publish with ``Nats-Msg-Id`` = event id (JetStream de-duplicates re-sends)."""
    event_id = event_id or uuid.uuid4().hex
    payload = encode_event(event)
    _require_connected(nc)
    if len(payload) + _HEADER_ROOM > nc.max_payload:
        raise PayloadTooLargeError(
            f"event of {len(payload)} bytes is over the NATS limit of {nc.max_payload} bytes")
    try:
        ack = await _unless_disconnected(nc, nc.jetstream().publish(
            event_subject(event), payload, headers={"Nats-Msg-Id": event_id}, timeout=timeout_s,
        ))
    except MaxPayloadError as exc:
        raise PayloadTooLargeError(
            f"event of {len(payload)} bytes is over the NATS limit") from exc
    except APIError as exc:
        if exc.err_code == _JS_MESSAGE_TOO_LARGE:
            raise PayloadTooLargeError(
                f"event of {len(payload)} bytes is over the stream's message limit") from exc
        if exc.description and "maximum" in exc.description and "exceeded" in exc.description:
            # The stream refuses new events when full (it never drops accepted ones).
            raise DependencyError(
                f"the document stream is full ({exc.description}): documents are refused "
                "until applied events age out or its limit (DUET_DOCS_STREAM_MAX_BYTES) is "
                "raised") from exc
        raise DependencyError(f"JetStream refused the event: {exc.description}") from exc
    except DependencyError:
        raise
    except Exception as exc:
        raise DependencyError(f"could not publish to JetStream: {type(exc).__name__}") from exc
    return PublishedEvent(event_id, ack.seq, bool(ack.duplicate))


async def publish_and_wait(nc: NATS, event: DocumentEvent, *, timeout_s: float,
                           event_id: str | None = None,
                           held: Callable[[], str | None] | None = None,
                           every_s: float = 0.25) -> tuple[PublishedEvent, dict[str, Any]]:
    """Publish and wait until the worker has handled the event; returns its outcome.

    ``held``: asked once the event is published and then every ``every_s``; a reason it
    returns (the store is failing: the event waits for it) ends the wait with
    ``{"outcome": "held", "doc_id", "version", "reason"}``.
    """
    event_id = event_id or uuid.uuid4().hex
    _require_connected(nc)
    try:
        sub = await nc.subscribe(result_subject(event_id), max_msgs=1)
    except Exception as exc:
        raise DependencyError(f"could not subscribe for the outcome: {type(exc).__name__}"
                              ) from exc
    try:
        published = await publish_event(nc, event, event_id=event_id)
        deadline = time.monotonic() + timeout_s
        while True:
            reason = held() if held is not None else None
            if reason:
                return published, {"outcome": "held", "doc_id": event.doc_id,
                                   "version": event.version, "reason": reason}
            left = deadline - time.monotonic()
            try:
                msg = await sub.next_msg(timeout=max(min(left, every_s) if held else left,
                                                     0.001))
                return published, json.loads(msg.data)
            except Exception as exc:  # nats-py's timeout is a TimeoutError
                if not isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
                    raise TimeoutError_(f"event {event_id} not applied within "
                                        f"{timeout_s:g}s") from exc
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
