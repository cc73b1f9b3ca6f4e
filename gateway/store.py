"""The durable form of sessions, in JetStream.

Two things are kept per session, both bounded and expiring after ``DUET_SESSION_TTL``
without a write:

- its **record** (owner, channel, groups, history, escalation state) in the key-value bucket
  ``DUET_SESSIONS``, rewritten at the end of every turn;
- its **event log** on the subject ``duet.sessions.<id>`` of the stream ``DUET_SESSION_LOG``
  (at most ``DUET_SESSION_LOG_EVENTS`` kept per session), one message per emitted event.

Appends are compare-and-set on the subject's last sequence
(``Nats-Expected-Last-Subject-Sequence``): two gateway processes writing to one session
never interleave blindly; the loser reads what it missed (:meth:`SessionJournal.read`) and
appends after it. A gateway SIGKILLed and restarted, or another gateway process on the same
NATS, loads the session from here when its customer comes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    NotFoundError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from core.errors import ConflictError, DependencyError
from core.streams import MEMORY_BUCKET_MAX_BYTES, ensure_kv, ensure_stream
from gateway.events import ServerEvent, parse_event

__all__ = ["HEARTBEAT_TTL_S", "INSTANCE_HEADER", "JournalConflict", "Logged", "SessionJournal", "SessionRecord"]

#: A gateway process that has not refreshed its heartbeat for this long is gone.
HEARTBEAT_TTL_S = 10.0

log = logging.getLogger("duet.gateway")

_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-last check
_HEADER = "Nats-Expected-Last-Subject-Sequence"
#: The header naming the gateway process that appended an event.
INSTANCE_HEADER = "Duet-Instance"


class JournalConflict(ConflictError):
    """Another process appended to the session first; read what it wrote, then retry."""


@dataclass(frozen=True)
class Logged:
    """One event of a session's durable log."""

    stream_seq: int
    event: ServerEvent
    #: The gateway process that appended it.
    instance: str | None


class SessionRecord(BaseModel):
    """What a session is, apart from its events."""

    id: str = Field(description="Session id.")
    channel: str = Field(description="Channel it was opened on.")
    customer_id: str | None = Field(None, description="Owner (token sub or channel id).")
    groups: list[str] = Field(default_factory=list, description="ACL groups of the owner.")
    resume_token_sha256: str | None = Field(
        None, description="Anonymous sessions: hash of the secret that resumes them.")
    history: list[tuple[str, str]] = Field(
        default_factory=list, description="Earlier turns (role, text), oldest first.")
    escalated: bool = Field(False, description="Waiting for, or with, a person (the state "
                                               "itself: DUET_CONVERSATIONS).")
    low_confidence_turns: int = Field(0, ge=0, description="Low-confidence turns in a row.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class SessionJournal:
    """Typed access to the session bucket and the session log stream."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, instances: KeyValue, *,
                 stream: str, timeout_s: float = 5.0) -> None:
        self._js = js
        self._kv = kv
        self._instances = instances
        self._instances_bucket = f"{kv._name}_GATEWAYS"
        self._stream = stream
        self._timeout_s = timeout_s

    @classmethod
    async def open(cls, js: JetStreamContext, *, bucket: str = "DUET_SESSIONS",
                   stream: str = "DUET_SESSION_LOG", log_events: int = 5000,
                   ttl_s: float = 86400.0, max_event_bytes: int = 256 * 1024,
                   max_bytes: int = 1024**3, bucket_max_bytes: int = 256 * 1024**2,
                   ) -> SessionJournal:
        """Create (or bring up to date) the bucket and the stream."""
        kv = await ensure_kv(js, KeyValueConfig(
            bucket=bucket, history=1, ttl=ttl_s, storage=StorageType.FILE,
            max_value_size=1024 * 1024, max_bytes=bucket_max_bytes))
        instances = await _open_instances(js, f"{bucket}_GATEWAYS")
        config = StreamConfig(
            name=stream, subjects=["duet.sessions.*"], storage=StorageType.FILE,
            max_msgs_per_subject=log_events, max_age=ttl_s, discard=DiscardPolicy.OLD,
            max_msg_size=max_event_bytes, max_bytes=max_bytes,
            duplicate_window=min(120.0, ttl_s),
        )
        await ensure_stream(js, config)
        return cls(js, kv, instances, stream=stream)

    @staticmethod
    def subject(session_id: str) -> str:
        """The log subject of a session."""
        return f"duet.sessions.{session_id}"

    async def load_record(self, session_id: str) -> SessionRecord | None:
        """The session's record, or None (never written, or expired)."""
        try:
            entry = await self._kv.get(session_id)
        except KeyNotFoundError:
            return None
        except Exception as exc:
            raise DependencyError(f"session store unavailable: {exc}") from exc
        if entry.value is None:
            return None
        return SessionRecord.model_validate_json(entry.value)

    async def save_record(self, record: SessionRecord) -> None:
        """Write the record (last writer wins: it is rewritten whole after every turn)."""
        record.updated_at = datetime.now(UTC)
        try:
            await self._kv.put(record.id, record.model_dump_json().encode())
        except Exception as exc:
            raise DependencyError(f"session store unavailable: {exc}") from exc

    async def append(self, event: ServerEvent, *, expected_last: int, instance: str) -> int:
        """Append a stamped event if the log's last sequence is ``expected_last``; returns
        the new last sequence. Raises :class:`JournalConflict` if another writer was first."""
        assert event.session_id is not None
        payload = json.dumps(event.wire(), separators=(",", ":")).encode()
        try:
            ack = await self._js.publish(
                self.subject(event.session_id), payload, timeout=self._timeout_s,
                stream=self._stream, headers={_HEADER: str(expected_last), INSTANCE_HEADER: instance})
        except APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise JournalConflict("another process wrote to this session") from exc
            raise DependencyError(f"session log unavailable: {exc}") from exc
        except Exception as exc:
            raise DependencyError(f"session log unavailable: {exc}") from exc
        return ack.seq

    async def last_sequence(self, session_id: str) -> int:
        """The stream sequence of the session's newest logged event (0: none)."""
        try:
            msg = await self._js.get_last_msg(self._stream, self.subject(session_id))
        except NotFoundError:
            return 0
        except Exception as exc:
            raise DependencyError(f"session log unavailable: {exc}") from exc
        return msg.seq or 0

    async def read(self, session_id: str, *, after: int = 0) -> list[Logged]:
        """The session's logged events after stream sequence ``after``, oldest first."""
        last = await self.last_sequence(session_id)
        if last <= after:
            return []
        policy = (DeliverPolicy.ALL if after == 0 else DeliverPolicy.BY_START_SEQUENCE)
        config = ConsumerConfig(
            deliver_policy=policy, opt_start_seq=after + 1 if after else None,
            ack_policy=AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True)
        out: list[Logged] = []
        try:
            sub = await self._js.pull_subscribe(self.subject(session_id), stream=self._stream,
                                                config=config)
        except Exception as exc:
            raise DependencyError(f"session log unavailable: {exc}") from exc
        try:
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=self._timeout_s)
                except TimeoutError as exc:
                    raise DependencyError("session log read timed out") from exc
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    try:
                        instance = (msg.headers or {}).get(INSTANCE_HEADER)
                        out.append(Logged(seq, parse_event(msg.data), instance))
                    except ValueError:
                        log.error("unreadable session event skipped",
                                  extra={"session_id": session_id, "stream_seq": seq})
                if not msgs or msgs[-1].metadata.sequence.stream >= last:
                    return out
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self._stream, sub._consumer)

    async def heartbeat(self, instance: str) -> None:
        """Say that this gateway process is alive (every few seconds)."""
        try:
            await self._instances.put(instance, b"1")
            return
        except Exception as exc:
            error: Exception = exc
        # The bucket lives in the server's memory: a restarted nats-server has lost it.
        try:
            self._instances = await _open_instances(self._js, self._instances_bucket)
            await self._instances.put(instance, b"1")
        except Exception as exc:
            raise DependencyError(f"session store unavailable: {error}") from exc

    async def alive(self, instance: str) -> bool:
        """Whether that gateway process said so within the heartbeat TTL."""
        try:
            entry = await self._instances.get(instance)
        except KeyNotFoundError:
            return False
        except Exception as exc:
            raise DependencyError(f"session store unavailable: {exc}") from exc
        return entry.value is not None

    async def retire(self, instance: str) -> None:
        """A clean shutdown: this process's turns are not running anywhere any more."""
        with contextlib.suppress(Exception):
            await self._instances.delete(instance)


async def _open_instances(js: JetStreamContext, bucket: str) -> KeyValue:
    """The heartbeat bucket (in memory: heartbeats are worthless after a restart)."""
    return await ensure_kv(js, KeyValueConfig(
        bucket=bucket, history=1, ttl=HEARTBEAT_TTL_S, storage=StorageType.MEMORY,
        max_bytes=MEMORY_BUCKET_MAX_BYTES))
