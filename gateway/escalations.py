"""The human side's shared state: each conversation's state, the queue, claims, left
messages and who is online, durable in JetStream.

A conversation is in one of four states, every transition recorded (who, when, why)::

    bot ──escalate──▶ waiting ──claim──▶ human (by X) ──release──▶ bot
                        │  │                   └──────close──────▶ closed
                        │  └──session ended (abandoned)──▶ closed
                        └──back to the bot──▶ bot

A waiting conversation whose customer has not been seen (connected, or writing) for the
session idle time leaves the queue: it is closed by ``system`` with the reason
``abandoned`` (:meth:`EscalationQueue.abandon_stale`), so the others move up and the record
keeps its history. Processes holding a waiting customer's connection refresh ``seen_at``.

- **Records**: the key-value bucket ``DUET_CONVERSATIONS``, one key per session that ever
  left the bot (absent: ``bot``). Every change is compare-and-set on the key's revision, so
  two gateway processes never both claim one conversation; the loser re-reads and is told.
- **A mirror in every process**: a watcher on the bucket keeps a local copy, so the queue,
  a state check on every customer turn and the positions are memory reads; the same watch
  is the live feed (:meth:`EscalationQueue.listen`) the supervisor sockets of every process
  read.
- **Presence**: the bucket ``DUET_SUPERVISORS`` (memory, short TTL) holds one key per open
  supervisor socket, refreshed while it is open.

Without JetStream (unit tests) the same class runs on an in-process store with the same
compare-and-set rules (:class:`MemoryStore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from core.natsd import connection_log
from core.streams import MEMORY_BUCKET_MAX_BYTES, ensure_kv
from gateway.protocol import ErrorCode, ProtocolError

__all__ = [
    "Change",
    "ConversationRecord",
    "ConversationState",
    "Escalation",
    "EscalationQueue",
    "LeftMessage",
    "MemoryStore",
    "Transition",
]

log = logging.getLogger("duet.gateway")

#: Left messages kept per conversation (the oldest go first).
MAX_LEFT_MESSAGES = 50
#: Transitions kept per conversation record (the audit log keeps all).
MAX_TRANSITIONS = 50
#: A supervisor socket that has not refreshed its presence for this long is gone.
PRESENCE_TTL_S = 15.0


def _now() -> datetime:
    return datetime.now(UTC)


class ConversationState(StrEnum):
    """Who has the conversation."""

    bot = "bot"
    waiting = "waiting"
    human = "human"
    closed = "closed"


class LeftMessage(BaseModel):
    """What the customer wrote while waiting (kept and shown to supervisors)."""

    text: str = Field(description="The customer's words.")
    at: datetime = Field(default_factory=_now, description="When (UTC).")


class Transition(BaseModel):
    """One change of state."""

    at: datetime = Field(default_factory=_now, description="When (UTC).")
    to: ConversationState = Field(description="The new state.")
    actor: str = Field(description="bot, customer, system, or the supervisor's name.")
    reason: str | None = Field(None, description="Why, when there is one.")


class ConversationRecord(BaseModel):
    """A conversation's human-side state (one key of ``DUET_CONVERSATIONS``)."""

    session_id: str = Field(description="The session.")
    state: ConversationState = Field(ConversationState.bot, description="Who has it.")
    reason: str | None = Field(None, description="Why it was escalated.")
    note: str | None = Field(None, description="The customer's words when asking for a person.")
    channel: str | None = Field(None, description="The customer's channel.")
    customer_id: str | None = Field(None, description="The customer's id (None: anonymous).")
    since: datetime | None = Field(None, description="When it started waiting (UTC).")
    last_message: str | None = Field(None, description="The customer's latest words.")
    agent: str | None = Field(None, description="The supervisor holding it (state human).")
    claimed_at: datetime | None = Field(None, description="When it was claimed.")
    notice: str | None = Field(
        None, description="What the waiting customer was told: `offline` (no supervisor was "
                          "online) or `timeout` (the wait passed DUET_HANDOFF_TIMEOUT_S).")
    messages: list[LeftMessage] = Field(
        default_factory=list, description="Messages the customer left while waiting.")
    seen_at: datetime | None = Field(
        None, description="When the waiting customer was last seen (connected or writing).")
    transitions: list[Transition] = Field(default_factory=list, description="State changes.")
    revision: int = Field(0, exclude=True, description="The bucket revision read.")

    def summary(self, now: datetime | None = None) -> dict:
        """The queue entry a supervisor sees."""
        now = now or _now()
        return {
            "session_id": self.session_id, "state": self.state.value, "reason": self.reason,
            "note": self.note, "channel": self.channel, "customer_id": self.customer_id,
            "since": self.since.isoformat() if self.since else None,
            "wait_s": round((now - self.since).total_seconds(), 1) if self.since else 0.0,
            "last_message": self.last_message, "agent": self.agent, "notice": self.notice,
            "messages": [m.model_dump(mode="json") for m in self.messages],
        }

    def moved(self, to: ConversationState, actor: str, reason: str | None = None
              ) -> ConversationRecord:
        """A copy in state ``to`` with the transition recorded."""
        record = self.model_copy(deep=True)
        record.state = to
        record.transitions = [*record.transitions, Transition(to=to, actor=actor, reason=reason)
                              ][-MAX_TRANSITIONS:]
        return record


#: The old name: a conversation waiting for (or with) a person.
Escalation = ConversationRecord


@dataclass(frozen=True)
class Change:
    """A conversation record changed (here or in another gateway process)."""

    before: ConversationState
    record: ConversationRecord


class _Conflict(Exception):
    """Someone else wrote the key first."""


class Store(Protocol):
    """A key-value store with compare-and-set (a JetStream bucket, or memory)."""

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """Value and revision, or None."""

    async def create(self, key: str, value: bytes) -> int:
        """Write a new key; raises ``_Conflict`` if it exists."""

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write if the key is still at ``revision``; raises ``_Conflict`` otherwise."""

    def watch(self) -> AsyncIterator[tuple[str, bytes | None, int]]:
        """Every key's latest value, then every change."""


class MemoryStore:
    """An in-process store with the bucket's compare-and-set rules."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}
        self._revision = 0
        self._watchers: set[asyncio.Queue[tuple[str, bytes | None, int]]] = set()
        self.presence: dict[str, tuple[str, float]] = {}

    async def get(self, key: str) -> tuple[bytes, int] | None:
        return self._data.get(key)

    def _write(self, key: str, value: bytes) -> int:
        self._revision += 1
        self._data[key] = (value, self._revision)
        for queue in self._watchers:
            queue.put_nowait((key, value, self._revision))
        return self._revision

    async def create(self, key: str, value: bytes) -> int:
        if key in self._data:
            raise _Conflict(key)
        return self._write(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        current = self._data.get(key)
        if current is None or current[1] != revision:
            raise _Conflict(key)
        return self._write(key, value)

    async def watch(self) -> AsyncIterator[tuple[str, bytes | None, int]]:
        queue: asyncio.Queue[tuple[str, bytes | None, int]] = asyncio.Queue()
        for key, (value, revision) in list(self._data.items()):
            queue.put_nowait((key, value, revision))
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)


class _BucketStore:
    """The ``DUET_CONVERSATIONS`` bucket."""

    def __init__(self, kv: KeyValue, presence: KeyValue, *,
                 js: JetStreamContext | None = None) -> None:
        self.kv = kv
        self.presence = presence
        self._js = js

    async def reopen_presence(self) -> None:
        """Open the presence bucket again: it lives in memory, and a restarted NATS lost it."""
        if self._js is not None:
            self.presence = await _open_presence(self._js)

    async def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return entry.value, entry.revision or 0

    async def create(self, key: str, value: bytes) -> int:
        try:
            return await self.kv.create(key, value)
        except KeyWrongLastSequenceError as exc:
            raise _Conflict(key) from exc

    async def update(self, key: str, value: bytes, revision: int) -> int:
        try:
            return await self.kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError as exc:
            raise _Conflict(key) from exc

    async def watch(self) -> AsyncIterator[tuple[str, bytes | None, int]]:
        # The watch's consumer lives in the server's memory: after a reconnection (a
        # restarted server) it ends, and the caller opens it again at once.
        conn = connection_log(getattr(self._js, "_nc", None))
        generation = conn.generation if conn is not None else 0
        watcher = await self.kv.watchall()
        try:
            while conn is None or conn.generation == generation:
                try:
                    entry = await watcher.updates(timeout=1.0)
                except TimeoutError:
                    continue
                if not isinstance(entry, KeyValue.Entry):  # the end of the initial values
                    continue
                value = entry.value if entry.operation is None else None
                yield entry.key, value, entry.revision or 0
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()


async def _open_presence(js: JetStreamContext) -> KeyValue:
    """The supervisors' presence bucket (in memory: presence is worthless after a restart)."""
    return await ensure_kv(js, KeyValueConfig(
        bucket="DUET_SUPERVISORS", history=1, ttl=PRESENCE_TTL_S,
        storage=StorageType.MEMORY, max_bytes=MEMORY_BUCKET_MAX_BYTES))


def _refuse(code: str, message: str) -> ProtocolError:
    return ProtocolError(code, message)


class EscalationQueue:
    """The conversations' human-side state, first come first served; one holder at a time."""

    def __init__(self, store: Store | None = None, *, clock: Callable[[], float] = time.time
                 ) -> None:
        self._store: Store = store or MemoryStore()
        self._clock = clock
        self._records: dict[str, ConversationRecord] = {}
        self._listeners: set[asyncio.Queue[Change]] = set()
        self._hooks: list[Callable[[Change], None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._online_cache: tuple[float, list[str]] = (-1.0, [])

    @classmethod
    async def open(cls, js: JetStreamContext, *, bucket: str = "DUET_CONVERSATIONS",
                   ttl_s: float = 86400.0, max_bytes: int = 256 * 1024**2) -> EscalationQueue:
        """The queue over JetStream (buckets created if missing, limits kept up to date)."""
        kv = await ensure_kv(js, KeyValueConfig(
            bucket=bucket, history=1, ttl=ttl_s, storage=StorageType.FILE,
            max_value_size=1024 * 1024, max_bytes=max_bytes))
        return cls(_BucketStore(kv, await _open_presence(js), js=js))

    # --- lifetime ----------------------------------------------------------------------

    async def __aenter__(self) -> EscalationQueue:
        self._watch = asyncio.create_task(self._follow())
        # the mirror is complete once the store has replayed what it has
        await self._settle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _settle(self) -> None:
        store = self._store
        if isinstance(store, _BucketStore):
            try:
                keys = await store.kv.keys()
            except NoKeysError:
                keys = []
            for key in keys:
                found = await store.get(key)
                if found is not None:
                    self._apply(key, found[0], found[1])
        else:
            for key, (value, revision) in list(store._data.items()):  # type: ignore[attr-defined]
                self._apply(key, value, revision)

    async def _follow(self) -> None:
        failing = False
        while True:
            try:
                async for key, value, revision in self._store.watch():
                    if failing:
                        failing = False
                        log.info("conversation watch resumed")
                    self._apply(key, value, revision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down: once per outage, not every second
                if not failing:
                    log.warning("conversation watch failed; watching again",
                                extra={"reason": f"{type(exc).__name__}: {exc}"[:200]})
                failing = True
                await asyncio.sleep(1.0)

    def _apply(self, key: str, value: bytes | None, revision: int) -> None:
        known = self._records.get(key)
        if known is not None and known.revision >= revision:
            return
        if value is None:
            self._records.pop(key, None)
            return
        try:
            record = ConversationRecord.model_validate_json(value)
        except ValueError:
            log.error("unreadable conversation record skipped", extra={"session_id": key})
            return
        record.revision = revision
        self._records[key] = record
        change = Change(known.state if known else ConversationState.bot, record)
        for hook in self._hooks:
            hook(change)
        for queue in list(self._listeners):
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:  # a stalled listener resyncs from the snapshot
                log.warning("a supervisor feed is full; a change was dropped")

    def on_change(self, hook: Callable[[Change], None]) -> None:
        """Call ``hook`` for every change, made here or elsewhere."""
        self._hooks.append(hook)

    @contextlib.contextmanager
    def listen(self, maxsize: int = 1024):
        """A queue of every change from now on (``with queue.listen() as changes``)."""
        queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=maxsize)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    # --- reading (the local mirror) -------------------------------------------------------

    def get(self, session_id: str) -> ConversationRecord | None:
        """The conversation's record, if it ever left the bot."""
        return self._records.get(session_id)

    def state(self, session_id: str) -> ConversationState:
        """Who has the conversation."""
        record = self._records.get(session_id)
        return record.state if record is not None else ConversationState.bot

    def waiting(self) -> list[ConversationRecord]:
        """Everyone waiting, longest first."""
        rows = [r for r in self._records.values() if r.state is ConversationState.waiting]
        return sorted(rows, key=lambda r: (r.since or _now(), r.session_id))

    def held_by(self, agent: str) -> list[ConversationRecord]:
        """The conversations ``agent`` holds."""
        return [r for r in self._records.values()
                if r.state is ConversationState.human and r.agent == agent]

    def position(self, session_id: str) -> int | None:
        """1-based place in the queue, or None when not waiting."""
        for i, record in enumerate(self.waiting(), start=1):
            if record.session_id == session_id:
                return i
        return None

    def remove(self, session_id: str) -> ConversationRecord | None:
        """Forget a conversation in this process's mirror only (tests)."""
        return self._records.pop(session_id, None)

    def __len__(self) -> int:
        return len(self.waiting())

    # --- changing (compare-and-set) -------------------------------------------------------

    async def _change(self, session_id: str,
                      change: Callable[[ConversationRecord | None], ConversationRecord | None],
                      ) -> ConversationRecord | None:
        """Apply ``change`` to the current record and write it if nobody wrote first (the
        record re-read and ``change`` re-applied otherwise). ``change`` returns None to
        write nothing, or raises to refuse."""
        current = self._records.get(session_id)
        for _ in range(8):
            updated = change(current.model_copy(deep=True) if current else None)
            if updated is None:
                return current
            payload = updated.model_dump_json().encode()
            try:
                if current is None:
                    revision = await self._store.create(session_id, payload)
                else:
                    revision = await self._store.update(session_id, payload, current.revision)
            except _Conflict:
                found = await self._store.get(session_id)
                if found is not None:
                    self._apply(session_id, found[0], found[1])
                current = self._records.get(session_id)
                continue
            except ProtocolError:
                raise
            except Exception as exc:
                raise ProtocolError(ErrorCode.unavailable,
                                    "the conversation store is unavailable; try again",
                                    retryable=True) from exc
            self._apply(session_id, payload, revision)
            return self._records.get(session_id)
        raise ProtocolError(ErrorCode.unavailable, "the conversation is busy; try again",
                            retryable=True)

    async def enqueue(self, session_id: str, reason: str, *, note: str | None = None,
                      channel: str | None = None, customer_id: str | None = None,
                      last_message: str | None = None, offline: bool = False,
                      actor: str = "bot") -> ConversationRecord:
        """Put the conversation in the queue (bot/closed → waiting); a conversation already
        waiting keeps its place (a new ``note`` is kept), one with a person stays there."""

        def change(current: ConversationRecord | None) -> ConversationRecord | None:
            if current is not None and current.state is ConversationState.human:
                return None
            if current is not None and current.state is ConversationState.waiting:
                if not note or note == current.note:
                    return None
                current.note = note
                return current
            base = current or ConversationRecord(session_id=session_id)
            record = base.moved(ConversationState.waiting, actor, reason)
            record.reason, record.note, record.since = reason, note, _now()
            record.channel, record.customer_id = channel, customer_id
            record.last_message = last_message or record.last_message
            record.agent = record.claimed_at = None
            record.notice = "offline" if offline else None
            record.messages = []
            return record

        record = await self._change(session_id, change)
        assert record is not None
        return record

    async def claim(self, session_id: str, agent: str) -> ConversationRecord:
        """waiting → human (by ``agent``); one holder at a time."""

        def change(current: ConversationRecord | None) -> ConversationRecord:
            if current is None:
                raise _refuse("unknown_session", "no such conversation is waiting")
            if current.state is ConversationState.human:
                who = "you already hold" if current.agent == agent else "another supervisor holds"
                raise _refuse("already_claimed", f"{who} this conversation")
            if current.state is not ConversationState.waiting:
                raise _refuse("not_waiting", "this conversation is not waiting for a person")
            record = current.moved(ConversationState.human, agent)
            record.agent, record.claimed_at = agent, _now()
            return record

        record = await self._change(session_id, change)
        assert record is not None
        return record

    def _holder_check(self, current: ConversationRecord | None, session_id: str,
                      agent: str) -> ConversationRecord:
        if current is None:
            raise _refuse("unknown_session", "no such conversation")
        if current.state is not ConversationState.human or current.agent != agent:
            raise _refuse("not_claimed", "claim this conversation first")
        return current

    async def release(self, session_id: str, agent: str) -> ConversationRecord:
        """human (by ``agent``) → bot."""

        def change(current: ConversationRecord | None) -> ConversationRecord:
            record = self._holder_check(current, session_id, agent).moved(
                ConversationState.bot, agent, "released")
            record.agent = None
            return record

        record = await self._change(session_id, change)
        assert record is not None
        return record

    async def close(self, session_id: str, agent: str) -> ConversationRecord:
        """human (by ``agent``) → closed."""

        def change(current: ConversationRecord | None) -> ConversationRecord:
            record = self._holder_check(current, session_id, agent).moved(
                ConversationState.closed, agent, "closed")
            record.agent = None
            return record

        record = await self._change(session_id, change)
        assert record is not None
        return record

    def check_holder(self, session_id: str, agent: str) -> ConversationRecord:
        """The record if ``agent`` holds the conversation, else a refusal."""
        return self._holder_check(self._records.get(session_id), session_id, agent)

    async def back_to_bot(self, session_id: str) -> ConversationRecord | None:
        """The waiting customer goes back to the bot (waiting → bot); None if not waiting."""

        def change(current: ConversationRecord | None) -> ConversationRecord | None:
            if current is None or current.state is not ConversationState.waiting:
                return None
            return current.moved(ConversationState.bot, "customer", "back_to_bot")

        record = await self._change(session_id, change)
        return record if record is not None and record.state is ConversationState.bot else None

    async def leave_message(self, session_id: str, text: str) -> ConversationRecord | None:
        """Keep what a waiting customer wrote (shown to supervisors)."""

        def change(current: ConversationRecord | None) -> ConversationRecord | None:
            if current is None or current.state is not ConversationState.waiting:
                return None
            current.messages = [*current.messages, LeftMessage(text=text)][-MAX_LEFT_MESSAGES:]
            current.last_message = text
            current.seen_at = _now()
            return current

        return await self._change(session_id, change)

    async def note_message(self, session_id: str, text: str) -> None:
        """Remember a customer's latest words on a conversation that has a record."""
        if session_id not in self._records:
            return

        def change(current: ConversationRecord | None) -> ConversationRecord | None:
            if current is None or current.last_message == text:
                return None
            current.last_message = text
            return current

        await self._change(session_id, change)

    def waiting_ids(self) -> list[str]:
        """The sessions waiting now (no order)."""
        return [k for k, r in self._records.items() if r.state is ConversationState.waiting]

    async def seen(self, session_id: str, min_interval_s: float = 0.0) -> None:
        """The waiting customer is here: refresh ``seen_at`` (not more often than
        ``min_interval_s``)."""

        def change(current: ConversationRecord | None) -> ConversationRecord | None:
            if current is None or current.state is not ConversationState.waiting:
                return None
            now = _now()
            if (current.seen_at is not None
                    and (now - current.seen_at).total_seconds() < min_interval_s):
                return None
            current.seen_at = now
            return current

        await self._change(session_id, change)

    @staticmethod
    def _stale(record: ConversationRecord | None, idle_s: float, now: datetime) -> bool:
        if record is None or record.state is not ConversationState.waiting:
            return False
        marks = [m for m in (record.since, record.seen_at) if m is not None]
        return not marks or (now - max(marks)).total_seconds() >= idle_s

    async def abandon(self, session_id: str, idle_s: float) -> ConversationRecord | None:
        """Close the conversation's wait if its customer was not seen for ``idle_s``
        (anywhere); returns the closed record, or None if it stays."""

        wrote = False

        def change(current: ConversationRecord | None) -> ConversationRecord | None:
            nonlocal wrote
            wrote = self._stale(current, idle_s, _now())
            if not wrote:
                return None
            assert current is not None
            record = current.moved(ConversationState.closed, "system", "abandoned")
            record.agent = None
            return record

        try:
            record = await self._change(session_id, change)
        except ProtocolError:
            return None
        return record if wrote else None

    async def abandon_stale(self, idle_s: float) -> list[ConversationRecord]:
        """Close every wait whose customer was not seen for ``idle_s``; returns those this
        process closed."""
        now = _now()
        closed: list[ConversationRecord] = []
        for record in list(self._records.values()):
            if self._stale(record, idle_s, now):
                done = await self.abandon(record.session_id, idle_s)
                if done is not None:
                    closed.append(done)
        return closed

    async def timed_out(self, timeout_s: float) -> list[ConversationRecord]:
        """Mark every conversation waiting longer than ``timeout_s`` (once each); returns
        the ones this process marked (their customers are to be told)."""
        marked: list[ConversationRecord] = []
        now = _now()
        for record in self.waiting():
            if record.notice == "timeout" or record.since is None:
                continue
            if (now - record.since).total_seconds() < timeout_s:
                continue
            since = record.since

            def change(current: ConversationRecord | None, since=since
                       ) -> ConversationRecord | None:
                if (current is None or current.state is not ConversationState.waiting
                        or current.since != since or current.notice == "timeout"):
                    return None
                current.notice = "timeout"
                return current

            try:
                done = await self._change(record.session_id, change)
            except ProtocolError:
                continue
            if done is not None and done.notice == "timeout" and done.revision != record.revision:
                marked.append(done)
        return marked

    # --- presence --------------------------------------------------------------------------

    async def announce(self, agent: str, connection: str) -> None:
        """This supervisor socket is open (call every few seconds)."""
        store = self._store
        if isinstance(store, _BucketStore):
            try:
                await store.presence.put(connection, agent.encode())
            except Exception:
                with contextlib.suppress(Exception):
                    await store.reopen_presence()
                    await store.presence.put(connection, agent.encode())
        else:
            store.presence[connection] = (agent, self._clock())  # type: ignore[attr-defined]
        self._online_cache = (-1.0, [])

    async def withdraw(self, connection: str) -> None:
        """This supervisor socket closed."""
        store = self._store
        if isinstance(store, _BucketStore):
            with contextlib.suppress(Exception):
                await store.presence.delete(connection)
        else:
            store.presence.pop(connection, None)  # type: ignore[attr-defined]
        self._online_cache = (-1.0, [])

    async def online(self) -> list[str]:
        """The supervisors online now (any gateway process), by name."""
        stamp, names = self._online_cache
        now = self._clock()
        if 0 <= now - stamp < 1.0:
            return names
        store = self._store
        found: set[str] = set()
        if isinstance(store, _BucketStore):
            try:
                keys = await store.presence.keys()
            except NoKeysError:
                keys = []
            except Exception:
                log.warning("supervisor presence unavailable")
                keys = []
            for key in keys:
                with contextlib.suppress(Exception):
                    entry = await store.presence.get(key)
                    if entry.value:
                        found.add(entry.value.decode())
        else:
            for agent, seen in store.presence.values():  # type: ignore[attr-defined]
                if now - seen < PRESENCE_TTL_S:
                    found.add(agent)
        names = sorted(found)
        self._online_cache = (now, names)
        return names

    async def keep_announcing(self, agent: str, connection: str, every_s: float = 5.0) -> None:
        """Announce until cancelled, then withdraw."""
        try:
            while True:
                await self.announce(agent, connection)
                await asyncio.sleep(every_s)
        finally:
            await asyncio.shield(self.withdraw(connection))


async def each(every_s: float, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` every ``every_s`` seconds until cancelled (failures are logged)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic escalation work failed")
