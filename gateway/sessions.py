"""Chat sessions: per-session sequence numbers, the event log for resume, history, cache.

A session outlives its connections (a client may drop and resume with ``resume_from``) and,
with a :class:`~gateway.store.SessionJournal`, its process: every emitted event is appended
to the durable log before subscribers get it, and the record (owner, history) is saved after
every turn, so a restarted gateway, or another gateway process on the same NATS, loads the
session when its customer comes back. Events that another process appends to a session
reach this process's subscribers too (a plain NATS subscription on the log subject while
anyone here listens).

In memory a session ends after ``DUET_SESSION_IDLE_S`` without activity or subscriber; its
durable form expires after ``DUET_SESSION_TTL_S``. Every task a session starts (its turn,
its prefetch) is created in the registry's ``TaskGroup`` and cancelled with the session.

Memory is bounded (:class:`SessionLimits`, docs/limits.md): at most
``DUET_SESSIONS_PER_ADDRESS`` sessions per client address and ``DUET_SESSIONS_TOTAL`` in
all. A new session past either limit first lets go of the least recently active *idle*
session (no turn running, no connection subscribed) of that address, or of anyone; a
durable one stays resumable from the journal. Only when nothing is idle is the new session
refused. An idle session also sheds its prefetched passages after ``DUET_SESSION_SHED_S``
and, when durable, leaves memory after ``DUET_SESSION_UNLOAD_S`` (it is loaded again when
its customer comes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS

from agents.retrieval import PrefetchCache
from core.errors import DependencyError
from core.metrics import Metrics
from gateway.events import Delta, Done, ServerEvent, UserMessage, parse_event
from gateway.protocol import ErrorCode, ProtocolError
from gateway.store import (
    HEARTBEAT_TTL_S,
    INSTANCE_HEADER,
    JournalConflict,
    Logged,
    SessionJournal,
    SessionRecord,
)

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["Interrupted", "Session", "SessionLimits", "Sessions", "SessionsFull", "TokenBucket"]

log = logging.getLogger("duet.gateway")

HISTORY_TURNS = 20
#: Sessions let go before the reaper collects garbage and hands freed heap back to the
#: system (CPython keeps freed memory otherwise; one collection after many releases).
RELEASES_BEFORE_COMPACT = 64


def _compact_heap() -> None:
    """Collect cycles, then ask glibc to return free heap pages (no-op elsewhere)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


@dataclass
class TokenBucket:
    """A per-session flood limit: ``burst`` messages at once, ``per_s`` refilled a second."""

    burst: float
    per_s: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    stamp: float = -1.0

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self.clock()
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class SessionLimits:
    """How many sessions a process holds, and how long an idle one stays whole."""

    #: Sessions held per client address (sessions opened outside a request: not counted).
    per_address: int = 256
    #: Sessions held in all.
    total: int = 20000
    #: A durable session idle this long leaves memory (resumable from the journal).
    unload_s: float = 300.0
    #: A session idle this long drops its prefetched passages.
    shed_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionLimits:
        """The limits ``DUET_SESSIONS_*`` ask for."""
        return cls(per_address=settings.sessions_per_address, total=settings.sessions_total,
                   unload_s=settings.session_unload_s, shed_s=settings.session_shed_s)


class SessionsFull(ProtocolError):
    """No room for another session (every held one is busy or connected)."""

    def __init__(self, limit: str, message: str, *, code: str, retry_after_s: int) -> None:
        super().__init__(code, message, retryable=True)
        #: Which limit refused (the ``limit`` label of ``duet_refusals_total``).
        self.limit = limit
        #: What the caller is asked to wait (the ``Retry-After`` of an HTTP refusal).
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Interrupted:
    """A turn the log shows started and never ended (its gateway process died)."""

    turn_id: str
    text: str
    reply: str
    #: The gateway process that ran it.
    instance: str | None


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Session:
    """One customer conversation."""

    def __init__(self, record: SessionRecord, *, log_size: int, limiter: TokenBucket,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
                 journal: SessionJournal | None = None, instance: str = "",
                 metrics: Metrics | None = None, address: str | None = None,
                 on_touch: Callable[[Session], None] | None = None) -> None:
        self.record = record
        #: The client address that holds it here (None: opened outside a request).
        self.address = address
        self._on_touch = on_touch
        self._metrics = metrics
        self.instance = instance
        self.id = record.id
        self.seq = 0
        self.log: deque[ServerEvent] = deque(maxlen=log_size)
        self.cache = PrefetchCache()
        self.limiter = limiter
        self.last_active = time.monotonic()
        self.turn_task: asyncio.Task[None] | None = None
        #: The router's record of the latest turn (what it has sent, whether it ended).
        self.turn: Any = None
        #: A turn found unfinished when the session was loaded from the journal.
        self.interrupted: Interrupted | None = None
        #: The process is stopping: a cancelled turn is not closed (another process re-runs it).
        self.shutting_down = False
        self._journal = journal
        self._stream_seq = 0
        self._seen_ids: OrderedDict[str, None] = OrderedDict()
        self._subscribers: set[asyncio.Queue[ServerEvent]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = spawn
        self._emit_lock = asyncio.Lock()
        #: Set when another process changed the record (a supervisor's words added to the
        #: history on release): reloaded before the next turn.
        self.record_stale = False

    # --- what the session is -------------------------------------------------------------

    @property
    def channel(self) -> str:
        """The channel it was opened on."""
        return self.record.channel

    @property
    def customer_id(self) -> str | None:
        """Its owner's id (None: an anonymous session)."""
        return self.record.customer_id

    @property
    def groups(self) -> tuple[str, ...]:
        """ACL groups of its owner."""
        return tuple(self.record.groups)

    @property
    def history(self) -> list[tuple[str, str]]:
        """Earlier turns as (role, text), oldest first."""
        return self.record.history

    @property
    def escalated(self) -> bool:
        """Whether the conversation waits for, or is with, a person."""
        return self.record.escalated

    @escalated.setter
    def escalated(self, value: bool) -> None:
        self.record.escalated = value

    def owned_by(self, customer_id: str | None, resume_token: str | None) -> bool:
        """Whether this caller may resume or write to the session."""
        if self.record.customer_id is not None:
            return customer_id is not None and hmac.compare_digest(
                customer_id.encode(), self.record.customer_id.encode())
        expected = self.record.resume_token_sha256
        return (customer_id is None and expected is not None and resume_token is not None
                and hmac.compare_digest(_hash_token(resume_token), expected))

    def remember(self, user_text: str, answer_text: str) -> None:
        """Add a finished turn to the history (the newest ``HISTORY_TURNS`` kept)."""
        history = self.record.history
        history.extend((("user", user_text), ("assistant", answer_text)))
        del history[:-2 * HISTORY_TURNS]

    async def save(self) -> None:
        """Persist the record (after a turn); a store outage is logged, never raised."""
        if self._journal is None:
            return
        try:
            await self._journal.save_record(self.record)
        except DependencyError:
            log.exception("session record not saved", extra={"session_id": self.id})
            if self._metrics is not None:
                self._metrics.journal_failures.inc()

    async def reload_record(self) -> None:
        """Take the journal's record (history, state) over this process's copy."""
        self.record_stale = False
        if self._journal is None:
            return
        try:
            record = await self._journal.load_record(self.id)
        except DependencyError:
            log.exception("session record not reloaded", extra={"session_id": self.id})
            return
        if record is not None:
            self.record = record

    # --- events --------------------------------------------------------------------------

    async def emit(self, event: ServerEvent) -> ServerEvent:
        """Stamp ``session_id`` and the next ``seq``, append it to the journal, keep it in
        the log, deliver it to subscribers.

        Delivery applies backpressure: a subscriber's full queue makes the turn wait. A
        journal outage does not stop the conversation: the event is delivered and the
        durable log has a gap (a later replay reports ``resume_gap``).
        """
        async with self._emit_lock:
            while True:
                stamped = event.stamped(self.id, self.seq + 1)
                if self._journal is None:
                    break
                started = time.perf_counter()
                try:
                    self._stream_seq = await self._journal.append(
                        stamped, expected_last=self._stream_seq, instance=self.instance)
                    if self._metrics is not None:
                        self._metrics.journal_latency.observe(time.perf_counter() - started)
                    break
                except JournalConflict:
                    await self._catch_up_locked()
                except DependencyError:
                    log.exception("session event not journaled", extra={"session_id": self.id})
                    if self._metrics is not None:
                        self._metrics.journal_failures.inc()
                    break
            await self._accept_locked(stamped)
            return stamped

    async def _accept_locked(self, stamped: ServerEvent) -> None:
        self.seq = stamped.seq
        self.log.append(stamped)
        self._touch()
        if isinstance(stamped, UserMessage) and stamped.id is not None:
            self.seen_before(stamped.id)
        for queue in list(self._subscribers):
            await queue.put(stamped)

    async def _catch_up_locked(self) -> None:
        """Take in what other processes appended since our last append."""
        assert self._journal is not None
        events = await self._journal.read(self.id, after=self._stream_seq)
        for logged in events:
            self._stream_seq = max(self._stream_seq, logged.stream_seq)
            if logged.event.seq > self.seq:
                await self._accept_locked(logged.event)
        if not events:
            self._stream_seq = await self._journal.last_sequence(self.id)
        record = await self._journal.load_record(self.id)
        if record is not None and record.updated_at > self.record.updated_at:
            self.record.history = record.history
            self.record.escalated = record.escalated

    async def refresh(self) -> None:
        """Catch up with events other processes appended (a customer moving between
        gateway processes); a no-op when nothing changed or without a journal."""
        if self._journal is None:
            return
        async with self._emit_lock:
            if await self._journal.last_sequence(self.id) != self._stream_seq:
                await self._catch_up_locked()

    async def take_foreign(self, item: ServerEvent) -> None:
        """An event another process appended (live fan-out)."""
        async with self._emit_lock:
            if item.seq == self.seq + 1:
                await self._accept_locked(item)
            elif item.seq > self.seq + 1 and self._journal is not None:
                await self._catch_up_locked()

    async def connect(self, queue: asyncio.Queue[ServerEvent],
                      head: Callable[[int, bool], list[ServerEvent]],
                      resume_from: int | None) -> None:
        """Subscribe a new connection: ``head(after, complete)`` first, then the replay of
        every logged event after ``resume_from``, then live events, with none missed."""
        async with self._emit_lock:
            after = self.seq if resume_from is None else min(resume_from, self.seq)
            replay, complete = self.replay(after) if resume_from is not None else ([], True)
            for item in head(after, complete) + replay:
                await queue.put(item)
            self._subscribers.add(queue)
            self._touch()

    def subscribe(self, maxsize: int = 256) -> asyncio.Queue[ServerEvent]:
        """A queue receiving every event emitted from now on."""
        queue: asyncio.Queue[ServerEvent] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)
        self._touch()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ServerEvent]) -> None:
        """Stop delivering to ``queue``."""
        self._subscribers.discard(queue)
        self._touch()

    def _touch(self) -> None:
        self.last_active = time.monotonic()
        if self._on_touch is not None:
            self._on_touch(self)

    @property
    def idle(self) -> bool:
        """Neither a turn running nor a connection subscribed: may be let go."""
        return not self._subscribers and not self.busy

    def shed(self) -> None:
        """Drop what an idle session can do without: its prefetched passages."""
        if len(self.cache):
            self.cache.clear()

    @property
    def subscribed(self) -> bool:
        """Whether a connection is listening."""
        return bool(self._subscribers)

    def replay(self, after: int) -> tuple[list[ServerEvent], bool]:
        """Logged events with ``seq > after``, and whether all of them were still kept."""
        events = [e for e in self.log if e.seq > after]
        if after >= self.seq:
            return events, True
        contiguous = bool(events) and events[0].seq == after + 1 and all(
            b.seq == a.seq + 1 for a, b in zip(events, events[1:], strict=False))
        return events, contiguous

    def knows_message(self, message_id: str) -> bool:
        """Whether a message with this client id was accepted already (the last 1,024)."""
        return message_id in self._seen_ids

    def seen_before(self, message_id: str) -> bool:
        """Whether a message with this client id came already; remembers it."""
        if message_id in self._seen_ids:
            return True
        self._seen_ids[message_id] = None
        if len(self._seen_ids) > 1024:
            self._seen_ids.popitem(last=False)
        return False

    # --- tasks ---------------------------------------------------------------------------

    def start(self, coro: Coroutine[Any, Any, None], *, turn: Any = None) -> asyncio.Task[None]:
        """Run ``coro`` as a task of this session (its current turn when ``turn`` is given)."""
        task = self._spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if turn is not None:
            self.turn_task, self.turn = task, turn
        return task

    @property
    def busy(self) -> bool:
        """Whether a turn is in progress."""
        return self.turn_task is not None and not self.turn_task.done()

    async def cancel_turn(self) -> bool:
        """Stop the turn in progress and wait until it has ended; False if there was none."""
        task = self.turn_task
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(_settled(task))
        return True

    def close(self, *, shutdown: bool = False) -> None:
        """Cancel every task of the session. On ``shutdown`` a turn in progress is left
        unfinished in the journal, so the next process to load the session runs it again."""
        self.shutting_down = shutdown
        for task in list(self._tasks):
            task.cancel()

    # --- loading -------------------------------------------------------------------------

    def load(self, events: list[Logged]) -> None:
        """Take in the journal's events (a session loaded by this process)."""
        for logged in events:
            self._stream_seq = max(self._stream_seq, logged.stream_seq)
            item = logged.event
            if item.seq > self.seq:
                self.seq = item.seq
                self.log.append(item)
                if isinstance(item, UserMessage) and item.id is not None:
                    self.seen_before(item.id)
        self.interrupted = _unfinished_turn(events)


def _unfinished_turn(events: list[Logged]) -> Interrupted | None:
    """The last turn, if the log shows it started and has no ``done``."""
    parts: list[str] = []
    for logged in reversed(events):
        item = logged.event
        if isinstance(item, Done):
            return None
        if isinstance(item, Delta) and item.turn_id is not None:
            parts.append(item.text)
        if isinstance(item, UserMessage) and item.turn_id is not None:
            return Interrupted(item.turn_id, item.text, "".join(reversed(parts)),
                               logged.instance)
    return None


async def _settled(task: asyncio.Task[None]) -> None:
    await asyncio.wait({task})


class Sessions:
    """The sessions this process holds, loaded from the journal on demand, and the task
    group their tasks run in."""

    def __init__(self, *, log_size: int, idle_s: float, rate_burst: float, rate_per_s: float,
                 journal: SessionJournal | None = None, nc: NATS | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: Metrics | None = None, limits: SessionLimits | None = None) -> None:
        self._clock = clock
        self._metrics = metrics
        self.limits = limits or SessionLimits()
        #: Held sessions, least recently active first.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        #: Held sessions per client address, least recently active first.
        self._by_address: dict[str, OrderedDict[str, None]] = {}
        self._ended_hooks: list[Callable[[Session], Awaitable[None]]] = []
        self._released_since_compact = 0
        self._pass_hooks: list[Callable[[], Awaitable[None]]] = []
        self._loading: dict[str, asyncio.Future[Session | None]] = {}
        self._log_size = log_size
        self._idle_s = idle_s
        self._rate = (rate_burst, rate_per_s)
        self._journal = journal
        self._nc = nc
        self._fanout: dict[str, Any] = {}
        #: This process, as written beside every event it journals.
        self.instance = uuid.uuid4().hex[:12]
        self._group: asyncio.TaskGroup | None = None
        self._reaper: asyncio.Task[None]

    async def __aenter__(self) -> Sessions:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._reaper = self._group.create_task(self._reap())
        if self._journal is not None:
            await self._journal.heartbeat(self.instance)
            self._beat = self._group.create_task(self._heartbeat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in list(self._sessions.values()):
            session.close(shutdown=self._journal is not None)
        self._sessions.clear()
        self._by_address.clear()
        self._count()
        for sub in list(self._fanout.values()):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._fanout.clear()
        group, self._group = self._group, None
        assert group is not None
        self._reaper.cancel()
        if self._journal is not None:
            self._beat.cancel()
            await self._journal.retire(self.instance)
        await group.__aexit__(None, None, None)

    @property
    def idle_s(self) -> float:
        """How long a session without activity or connection lives (its end)."""
        return self._idle_s

    @property
    def durable(self) -> bool:
        """Whether sessions are kept in JetStream."""
        return self._journal is not None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._group is None:
            coro.close()
            raise RuntimeError("the session registry is closed")
        task = self._group.create_task(_guarded(coro))
        # a task cancelled before it ever ran must still close its coroutine
        task.add_done_callback(lambda _: coro.close())
        return task

    def _new(self, record: SessionRecord, address: str | None = None) -> Session:
        session = Session(record, log_size=self._log_size,
                          limiter=TokenBucket(burst=self._rate[0], per_s=self._rate[1],
                                              clock=self._clock),
                          spawn=self._spawn, journal=self._journal, instance=self.instance,
                          metrics=self._metrics, address=address, on_touch=self._touched)
        self._sessions[session.id] = session
        if address is not None:
            self._by_address.setdefault(address, OrderedDict())[session.id] = None
        self._count()
        return session

    def _count(self) -> None:
        if self._metrics is not None:
            self._metrics.sessions_held.set(len(self._sessions))

    def _touched(self, session: Session) -> None:
        if self._sessions.get(session.id) is not session:
            return
        self._sessions.move_to_end(session.id)
        if session.address is not None:
            mine = self._by_address.get(session.address)
            if mine is not None and session.id in mine:
                mine.move_to_end(session.id)

    # --- limits ---------------------------------------------------------------------------

    def on_ended(self, hook: Callable[[Session], Awaitable[None]]) -> None:
        """Call ``hook`` for a session that ended here: expired after ``idle_s``, or (not
        durable) let go to make room: nobody can resume it any more."""
        self._ended_hooks.append(hook)

    def after_reap(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call ``hook`` after every pass of the reaper (housekeeping that rides along)."""
        self._pass_hooks.append(hook)

    def by_address(self, address: str) -> int:
        """Sessions held for a client address."""
        return len(self._by_address.get(address, ()))

    def _oldest_idle(self, ids: OrderedDict[str, Any]) -> Session | None:
        for session_id in ids:
            session = self._sessions.get(session_id)
            if session is not None and session.idle and session_id not in self._loading:
                return session
        return None

    async def _release(self, session: Session, reason: str) -> None:
        """Let go of a held session (its tasks are cancelled; the journal keeps a durable one)."""
        if self._sessions.get(session.id) is not session:
            return
        session.close()
        del self._sessions[session.id]
        if session.address is not None:
            mine = self._by_address.get(session.address)
            if mine is not None:
                mine.pop(session.id, None)
                if not mine:
                    del self._by_address[session.address]
        self._count()
        self._released_since_compact += 1
        if self._metrics is not None:
            self._metrics.sessions_released.labels(reason).inc()
        await self.unwatch_idle(session)
        if reason == "expired" or (self._journal is None and reason.startswith("evicted")):
            for hook in self._ended_hooks:
                try:
                    await hook(session)
                except Exception:
                    log.exception("session end hook failed", extra={"session_id": session.id})

    def _refuse(self, limit: str, message: str, *, code: str) -> SessionsFull:
        if self._metrics is not None:
            self._metrics.refusals.labels(limit).inc()
        log.warning("session refused", extra={"limit": limit})
        return SessionsFull(limit, message, code=code, retry_after_s=30)

    async def _make_room(self, address: str | None) -> None:
        """Let go of idle sessions until one more fits, or refuse (:class:`SessionsFull`)."""
        limits = self.limits
        if address is not None:
            mine = self._by_address.get(address)
            if mine is not None and len(mine) >= limits.per_address:
                victim = self._oldest_idle(mine)
                if victim is None:
                    raise self._refuse(
                        "sessions_per_address", "too many conversations are open from your "
                        "address; close one or try again later", code=ErrorCode.rate_limited)
                await self._release(victim, "evicted_address")
        while len(self._sessions) >= limits.total:
            victim = self._oldest_idle(self._sessions)
            if victim is None:
                raise self._refuse("sessions_total", "conversations are at capacity for a "
                                   "moment; try again shortly", code=ErrorCode.unavailable)
            await self._release(victim, "evicted_total")

    async def create(self, *, channel: str, customer_id: str | None,
                     groups: tuple[str, ...], address: str | None = None
                     ) -> tuple[Session, str | None]:
        """A new session (held for ``address``); for an anonymous owner also the resume
        token (shown once). Raises :class:`SessionsFull` when no idle session can make room."""
        await self._make_room(address)
        resume_token = secrets.token_urlsafe(24) if customer_id is None else None
        record = SessionRecord(
            id=uuid.uuid4().hex, channel=channel, customer_id=customer_id, groups=list(groups),
            resume_token_sha256=_hash_token(resume_token) if resume_token else None)
        if self._journal is not None:
            await self._journal.save_record(record)
        return self._new(record, address), resume_token

    async def get(self, session_id: str, *, address: str | None = None) -> Session | None:
        """The session: held here, else loaded from the journal (held for ``address``);
        None if unknown or expired. Loading may raise :class:`SessionsFull`."""
        session = self._sessions.get(session_id)
        if session is not None:
            await session.refresh()
            return session
        if self._journal is None:
            return None
        pending = self._loading.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Session | None] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = future
        try:
            session = await self._load(session_id, address)
            future.set_result(session)
            return session
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a lone loader's failure is raised below
            raise
        finally:
            del self._loading[session_id]

    async def _load(self, session_id: str, address: str | None) -> Session | None:
        assert self._journal is not None
        record = await self._journal.load_record(session_id)
        if record is None:
            return None
        events = await self._journal.read(session_id)
        if session_id in self._sessions:  # a create raced us (cannot happen for a known id)
            return self._sessions[session_id]
        await self._make_room(address)
        session = self._new(record, address)
        session.load(events)
        log.info("session loaded from the journal",
                 extra={"session_id": session_id, "events": len(events)})
        return session

    async def interrupted_here(self, session: Session) -> Interrupted | None:
        """The session's unfinished turn if the process that ran it is gone (taken: the
        caller runs it again), else None."""
        pending = session.interrupted
        if pending is None or self._journal is None:
            return None
        if pending.instance and pending.instance != self.instance:
            try:
                if await self._journal.alive(pending.instance):
                    return None  # still running over there; its events reach us
            except DependencyError:
                return None
        session.interrupted = None
        return pending

    async def _heartbeat(self) -> None:
        assert self._journal is not None
        while True:
            await asyncio.sleep(HEARTBEAT_TTL_S / 3)
            try:
                await self._journal.heartbeat(self.instance)
            except DependencyError:
                log.warning("gateway heartbeat not written")

    async def watch(self, session: Session) -> None:
        """Deliver events other processes append to this session to its subscribers here."""
        if self._nc is None or self._journal is None or session.id in self._fanout:
            return

        async def on_message(msg: Any) -> None:
            if msg.headers and msg.headers.get(INSTANCE_HEADER) == self.instance:
                return  # our own append, already delivered here
            try:
                item = parse_event(msg.data)
            except ValueError:
                return
            await session.take_foreign(item)

        self._fanout[session.id] = await self._nc.subscribe(
            SessionJournal.subject(session.id), cb=on_message)

    async def unwatch_idle(self, session: Session) -> None:
        """Stop the fan-out subscription of a session nobody here listens to."""
        if session.subscribed:
            return
        sub = self._fanout.pop(session.id, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def held(self, session_id: str) -> Session | None:
        """A session held in this process, without loading or refreshing."""
        return self._sessions.get(session_id)

    def __len__(self) -> int:
        return len(self._sessions)

    async def _reap(self) -> None:
        limits = self.limits
        every_s = min(60.0, self._idle_s / 2, limits.shed_s / 2,
                      limits.unload_s / 2 if self.durable else 60.0)
        while True:
            await asyncio.sleep(every_s)
            await self.reap()

    async def reap(self) -> None:
        """One pass: end sessions idle past ``idle_s``, unload durable ones idle past
        ``unload_s``, shed the prefetch of those idle past ``shed_s``; then the hooks."""
        limits = self.limits
        now = time.monotonic()
        for session in list(self._sessions.values()):
            idle_s = now - session.last_active
            if idle_s <= limits.shed_s and idle_s <= self._idle_s:
                break  # least recently active first: the rest are more recent
            if not session.idle or session.id in self._loading:
                continue
            if idle_s > self._idle_s:
                await self._release(session, "expired")
            elif self.durable and idle_s > limits.unload_s:
                await self._release(session, "unloaded")
            elif idle_s > limits.shed_s:
                session.shed()
        if self._released_since_compact >= RELEASES_BEFORE_COMPACT:
            self._released_since_compact = 0
            await asyncio.to_thread(_compact_heap)
        for hook in self._pass_hooks:
            try:
                await hook()
            except Exception:
                log.exception("reaper hook failed")


async def _guarded(coro: Awaitable[None]) -> None:
    """A session task never takes the task group down: failures are logged."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("session task failed")
