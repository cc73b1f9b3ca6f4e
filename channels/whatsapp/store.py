"""The WhatsApp channel's durable state, in JetStream.

- the **inbox**: stream ``DUET_WHATSAPP_INBOX`` (work queue). A verified webhook body is
  published here (and acknowledged by JetStream) *before* Meta gets its ``200``; the
  channel's durable consumer ``duet-whatsapp`` processes it with explicit acks, so a gateway
  killed after answering Meta processes the delivery when it comes back. The publish carries
  ``Nats-Msg-Id`` = the body's SHA-256: an identical retry within two minutes is dropped by
  JetStream itself.
- **ids** (bucket ``DUET_WHATSAPP_IDS``, TTL ``DUET_WHATSAPP_DEDUP_TTL_S``): one key per
  customer message id, created compare-and-set (the first delivery wins; Meta's later
  retries find it), and one per outgoing message part (claimed before it is sent: a reply is
  never sent twice, by this process or another).
- **lines** (bucket ``DUET_WHATSAPP_LINES``): number → session id and the time of the
  customer's last message (the 24-hour window), and per session the ``seq`` of the newest
  event rendered (where a restarted gateway picks the conversation up).
"""

from __future__ import annotations

import hashlib
import time

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from core.errors import DependencyError
from core.streams import ensure_kv, ensure_stream

__all__ = ["Line", "WhatsAppStore"]

INBOX_STREAM = "DUET_WHATSAPP_INBOX"
INBOX_SUBJECT = "duet.whatsapp.inbox"
CONSUMER = "duet-whatsapp"
IDS_BUCKET = "DUET_WHATSAPP_IDS"
LINES_BUCKET = "DUET_WHATSAPP_LINES"


class Line(BaseModel):
    """One customer number's conversation."""

    session_id: str = Field(description="The Duet session of this number.")
    last_inbound: float = Field(0.0, description="Epoch seconds of the customer's last message.")


def _key(value: str) -> str:
    """A KV-safe key for any id (message ids may carry ``+``, ``/`` and ``=``)."""
    return hashlib.sha256(value.encode()).hexdigest()[:40]


class WhatsAppStore:
    """Typed access to the inbox stream and the two buckets."""

    def __init__(self, js: JetStreamContext, ids: KeyValue, lines: KeyValue) -> None:
        self.js = js
        self._ids = ids
        self._lines = lines

    @classmethod
    async def open(cls, js: JetStreamContext, *, dedup_ttl_s: float,
                   lines_ttl_s: float, ack_wait_s: float = 30.0,
                   inbox_max_bytes: int = 256 * 1024**2,
                   bucket_max_bytes: int = 256 * 1024**2) -> WhatsAppStore:
        """Create (or bring up to date) the stream, its consumer and the buckets."""
        await ensure_stream(js, StreamConfig(
            name=INBOX_STREAM, subjects=[INBOX_SUBJECT], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, max_age=dedup_ttl_s, duplicate_window=120.0,
            discard=DiscardPolicy.NEW, max_msg_size=1024 * 1024, max_bytes=inbox_max_bytes))
        await js.add_consumer(INBOX_STREAM, ConsumerConfig(
            durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s,
            max_ack_pending=1024, max_deliver=20, filter_subject=INBOX_SUBJECT))
        ids = await _bucket(js, IDS_BUCKET, dedup_ttl_s, bucket_max_bytes)
        lines = await _bucket(js, LINES_BUCKET, lines_ttl_s, bucket_max_bytes)
        return cls(js, ids, lines)

    async def enqueue(self, body: bytes) -> int:
        """Keep a verified webhook body until it is processed; returns its stream sequence."""
        try:
            ack = await self.js.publish(
                INBOX_SUBJECT, body, stream=INBOX_STREAM, timeout=5.0,
                headers={"Nats-Msg-Id": hashlib.sha256(body).hexdigest(),
                         "Duet-Received": f"{time.time():.6f}"})
        except Exception as exc:
            raise DependencyError(f"whatsapp inbox unavailable: {exc}", retryable=True) from exc
        return ack.seq

    async def claim_message(self, message_id: str, delivery: int) -> bool:
        """Whether this delivery (inbox sequence ``delivery``) processes the customer message
        ``message_id``: the first delivery to ask does; a redelivery of that same inbox
        message (its processing was interrupted) does too; any other does not."""
        key = f"m.{_key(message_id)}"
        value = str(delivery).encode()
        try:
            await self._ids.create(key, value)
            return True
        except KeyWrongLastSequenceError:
            try:
                entry = await self._ids.get(key)
            except KeyNotFoundError:
                return await self.claim_message(message_id, delivery)  # expired meanwhile
            return entry.value == value

    async def claim_send(self, name: str) -> bool:
        """Whether this process sends the outgoing message ``name`` (first caller only)."""
        try:
            await self._ids.create(f"o.{_key(name)}", b"1")
            return True
        except KeyWrongLastSequenceError:
            return False

    async def line(self, number: str) -> Line | None:
        """The number's conversation, if it has one."""
        try:
            entry = await self._lines.get(f"n.{number}")
        except KeyNotFoundError:
            return None
        return Line.model_validate_json(entry.value) if entry.value else None

    async def create_line(self, number: str, line: Line) -> Line:
        """Record a new conversation for the number, unless another process was first (then
        that one is returned)."""
        try:
            await self._lines.create(f"n.{number}", line.model_dump_json().encode())
            return line
        except KeyWrongLastSequenceError:
            found = await self.line(number)
            return found if found is not None else await self.create_line(number, line)

    async def save_line(self, number: str, line: Line) -> None:
        """Rewrite the number's record (a new session, the time of its last message)."""
        await self._lines.put(f"n.{number}", line.model_dump_json().encode())

    async def lines(self) -> dict[str, Line]:
        """Every number with a conversation."""
        try:
            keys = await self._lines.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return {}
        out: dict[str, Line] = {}
        for key in keys:
            if key.startswith("n."):
                found = await self.line(key[2:])
                if found is not None:
                    out[key[2:]] = found
        return out

    async def cursor(self, session_id: str) -> int | None:
        """The ``seq`` of the newest event of the session rendered to WhatsApp."""
        try:
            entry = await self._lines.get(f"c.{session_id}")
        except KeyNotFoundError:
            return None
        return int(entry.value) if entry.value else None

    async def save_cursor(self, session_id: str, seq: int) -> None:
        """Remember how far the session has been rendered."""
        await self._lines.put(f"c.{session_id}", str(seq).encode())


async def _bucket(js: JetStreamContext, name: str, ttl_s: float, max_bytes: int) -> KeyValue:
    return await ensure_kv(js, KeyValueConfig(
        bucket=name, history=1, ttl=ttl_s, storage=StorageType.FILE, max_bytes=max_bytes))
