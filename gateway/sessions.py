"""Chat sessions: per-session sequence numbers, the event log for resume, history, cache.

A session outlives its connections (a client may drop and resume with ``resume_from``);
it ends after ``DUET_SESSION_IDLE_S`` without activity or subscriber. Every task a session
starts (its turn, its prefetch) is created in the store's ``TaskGroup`` and cancelled
with the session: none is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agents.retrieval import PrefetchCache

__all__ = ["Session", "SessionStore", "TokenBucket"]

log = logging.getLogger("duet.gateway")


@dataclass
class TokenBucket:
    """A per-session flood limit: ``burst`` messages at once, ``per_s`` refilled a second."""

    burst: float
    per_s: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Session:
    """One customer conversation."""

    def __init__(self, session_id: str, *, channel: str, customer_id: str | None,
                 groups: tuple[str, ...], log_size: int, limiter: TokenBucket,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        self.id = session_id
        self.channel = channel
        self.customer_id = customer_id
        self.groups = groups
        self.seq = 0
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self.history: list[tuple[str, str]] = []
        self.cache = PrefetchCache()
        self.limiter = limiter
        self.escalated = False
        self.last_active = time.monotonic()
        self.turn_task: asyncio.Task[None] | None = None
        #: The router's record of the latest turn (what it has sent, whether it ended).
        self.turn: Any = None
        self._seen_ids: OrderedDict[str, None] = OrderedDict()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = spawn
        self._emit_lock = asyncio.Lock()

    async def emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Stamp ``session_id`` and the next ``seq``, log it, deliver it to subscribers.

        Delivery applies backpressure: a subscriber's full queue makes the turn wait.
        """
        async with self._emit_lock:
            self.seq += 1
            stamped = {**event, "session_id": self.id, "seq": self.seq}
            self.log.append(stamped)
            self.last_active = time.monotonic()
            for queue in list(self._subscribers):
                await queue.put(stamped)
            return stamped

    async def connect(self, queue: asyncio.Queue[dict[str, Any]],
                      head: Callable[[int, bool], list[dict[str, Any]]],
                      resume_from: int | None) -> None:
        """Subscribe a new connection: ``head(after, complete)`` first, then the replay of
        every logged event after ``resume_from``, then live events, with none missed."""
        async with self._emit_lock:
            after = self.seq if resume_from is None else min(resume_from, self.seq)
            replay, complete = self.replay(after) if resume_from is not None else ([], True)
            for item in head(after, complete) + replay:
                await queue.put(item)
            self._subscribers.add(queue)
            self.last_active = time.monotonic()

    def subscribe(self, maxsize: int = 256) -> asyncio.Queue[dict[str, Any]]:
        """A queue receiving every event emitted from now on."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)
        self.last_active = time.monotonic()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop delivering to ``queue``."""
        self._subscribers.discard(queue)
        self.last_active = time.monotonic()

    @property
    def subscribed(self) -> bool:
        """Whether a connection is listening."""
        return bool(self._subscribers)

    def replay(self, after: int) -> tuple[list[dict[str, Any]], bool]:
        """Logged events with ``seq > after``, and whether all of them were still kept."""
        events = [e for e in self.log if e["seq"] > after]
        complete = after >= self.seq or (bool(events) and events[0]["seq"] == after + 1)
        return events, complete

    def seen_before(self, message_id: str) -> bool:
        """Whether a message with this client id came already (the last 1,024 are kept)."""
        if message_id in self._seen_ids:
            return True
        self._seen_ids[message_id] = None
        if len(self._seen_ids) > 1024:
            self._seen_ids.popitem(last=False)
        return False

    def start(self, coro: Coroutine[Any, Any, None], *, turn: Any = None) -> asyncio.Task[None]:
        """Run ``coro`` as a task of this session (its current turn when ``turn`` is given)."""
        task = self._spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if turn is not None:
            self.turn_task, self.turn = task, turn
        return task

    async def cancel_turn(self) -> bool:
        """Stop the turn in progress and wait until it has ended; False if there was none."""
        task = self.turn_task
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(_settled(task))
        return True

    def close(self) -> None:
        """Cancel every task of the session."""
        for task in list(self._tasks):
            task.cancel()


async def _settled(task: asyncio.Task[None]) -> None:
    await asyncio.wait({task})


class SessionStore:
    """All live sessions, and the task group their tasks run in."""

    def __init__(self, *, log_size: int, idle_s: float, rate_burst: float,
                 rate_per_s: float) -> None:
        self._sessions: dict[str, Session] = {}
        self._log_size = log_size
        self._idle_s = idle_s
        self._rate = (rate_burst, rate_per_s)
        self._group: asyncio.TaskGroup | None = None
        self._reaper: asyncio.Task[None]

    async def __aenter__(self) -> SessionStore:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._reaper = self._group.create_task(self._reap())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in list(self._sessions.values()):
            session.close()
        self._sessions.clear()
        group, self._group = self._group, None
        assert group is not None
        self._reaper.cancel()
        await group.__aexit__(None, None, None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._group is None:
            coro.close()
            raise RuntimeError("the session store is closed")
        task = self._group.create_task(_guarded(coro))
        # a task cancelled before it ever ran must still close its coroutine
        task.add_done_callback(lambda _: coro.close())
        return task

    def get(self, session_id: str) -> Session | None:
        """A live session, or None."""
        return self._sessions.get(session_id)

    def open(self, session_id: str | None, *, channel: str = "web",
             customer_id: str | None = None, groups: tuple[str, ...] = ()) -> tuple[Session, bool]:
        """The session with this id (resumed: True), or a new one."""
        if session_id and session_id in self._sessions:
            return self._sessions[session_id], True
        session = Session(
            session_id or uuid.uuid4().hex, channel=channel, customer_id=customer_id,
            groups=groups, log_size=self._log_size,
            limiter=TokenBucket(burst=self._rate[0], per_s=self._rate[1]), spawn=self._spawn,
        )
        self._sessions[session.id] = session
        return session, False

    def __len__(self) -> int:
        return len(self._sessions)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self._idle_s / 2))
            now = time.monotonic()
            for session in list(self._sessions.values()):
                idle = now - session.last_active
                busy = session.turn_task is not None and not session.turn_task.done()
                if idle > self._idle_s and not session.subscribed and not busy:
                    session.close()
                    self._sessions.pop(session.id, None)


async def _guarded(coro: Awaitable[None]) -> None:
    """A session task never takes the task group down: failures are logged."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("session task failed")
