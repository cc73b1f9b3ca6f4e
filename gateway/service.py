"""``ChatService``: the one API every channel uses.

A transport (the chat websocket, HTTP/SSE, voice, WhatsApp, the web widget) turns its wire
into these calls and renders the typed events back, with no knowledge of agents, router or
storage::

    conversation = await chat.open(identity, channel="web", session_id=..., resume_token=...)
    async with conversation.events(resume_from=n) as events:
        turn_id = await conversation.submit("Can I return an opened bulb?")
        async for event in events:          # SessionOpened, UserMessage, Delta, Done, ...
            render(event)

``open`` checks ownership: a session is resumed or written to only by its owner (the same
customer id, or for an anonymous session the ``resume_token`` its first ``session`` event
carried). Refusals say nothing about whether the session exists.

Limits (docs/limits.md): the caller's address (:data:`gateway.admission.current_client`,
left there by the admission middleware; None for work outside a request, such as the
WhatsApp inbox) spends a token per session opened and per message, and holds at most
``DUET_SESSIONS_PER_ADDRESS`` sessions. A waiting conversation whose session ended (no
customer seen for ``DUET_SESSION_IDLE_S``, here or in any process) leaves the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType

from core.metrics import Metrics
from gateway import handoff
from gateway.admission import Client, current_client, retry_after_s
from gateway.auth import Identity
from gateway.escalations import Change, ConversationState, EscalationQueue
from gateway.events import Delta, ErrorEvent, ServerEvent, SessionOpened
from gateway.protocol import ErrorCode, ProtocolError, check_text
from gateway.router import TurnRouter
from gateway.sessions import Session, Sessions

__all__ = ["ChatService", "Conversation", "EventStream"]

log = logging.getLogger("duet.gateway")

_REFUSED = "this session cannot be resumed here: it is unknown, expired, or not yours"


class ChatService:
    """Sessions, the turn router and the escalation queue, behind one API."""

    def __init__(self, sessions: Sessions, router: TurnRouter, escalations: EscalationQueue,
                 metrics: Metrics) -> None:
        self.sessions = sessions
        self.router = router
        self.escalations = escalations
        self.metrics = metrics
        escalations.on_change(self._conversation_changed)
        sessions.on_ended(self._session_ended)
        sessions.after_reap(self._keep_queue)

    async def _session_ended(self, session: Session) -> None:
        """Its customer is gone for good: a waiting conversation leaves the queue."""
        record = await self.escalations.abandon(session.id, self.sessions.idle_s)
        if record is not None:
            self.metrics.conversations_abandoned.inc()
            await self.router.audit.record("system", "abandoned", session.id,
                                           reason="session_expired")

    async def _keep_queue(self) -> None:
        """After each reaper pass: say that the waiting customers connected here are still
        here, and close the waits nobody has been seen on for ``idle_s`` (any process)."""
        for session_id in self.escalations.waiting_ids():
            session = self.sessions.held(session_id)
            if session is not None and not session.idle:
                await self.escalations.seen(session_id, self.sessions.idle_s / 4)
        for record in await self.escalations.abandon_stale(self.sessions.idle_s):
            self.metrics.conversations_abandoned.inc()
            await self.router.audit.record("system", "abandoned", record.session_id,
                                           reason="session_expired")

    def _conversation_changed(self, change: Change) -> None:
        """Keep a session held here in step with its conversation's state (changed here or
        by another gateway process)."""
        session = self.sessions.held(change.record.session_id)
        if session is None:
            return
        state = change.record.state
        session.escalated = state in (ConversationState.waiting, ConversationState.human)
        if change.before is ConversationState.human and state is not ConversationState.human:
            session.record_stale = True  # the person's words were saved into its history

    async def tell_timed_out(self, timeout_s: float) -> int:
        """Tell every customer whose wait passed ``timeout_s`` (once; any process may do
        it, one does); returns how many were told."""
        told = 0
        for record in await self.escalations.timed_out(timeout_s):
            session = await self.sessions.get(record.session_id)
            if session is None:
                continue
            await session.emit(Delta(source="system",
                                     text=handoff.timed_out(round(timeout_s / 60, 1))))
            await self.router.audit.record("system", "timeout", session.id,
                                           waited_s=round(timeout_s, 1))
            told += 1
        return told

    async def open(self, identity: Identity, *, channel: str, session_id: str | None = None,
                   resume_token: str | None = None) -> Conversation:
        """A new session for ``identity``, or its own session ``session_id``.

        Raises :class:`ProtocolError` ``unauthorized`` when the session is not the caller's
        (or unknown, or expired: the same answer), ``unavailable`` when the session store
        cannot be reached.
        """
        customer_id = None if identity.anonymous else identity.customer_id
        client = current_client.get()
        address = None if client is None or client.exempt else client.address
        try:
            if session_id is None:
                if client is not None and (wait_s := client.take_session_open()) > 0:
                    raise _rate_limited("too many new conversations from your address; "
                                        "try again shortly", wait_s)
                session, token = await self.sessions.create(
                    channel=channel, customer_id=customer_id, groups=identity.groups,
                    address=address)
                return Conversation(self, session, resumed=False, resume_token=token,
                                    client=client)
            session = await self.sessions.get(session_id, address=address)
        except ProtocolError:
            raise
        except Exception as exc:
            log.exception("session store failed", extra={"session_id": session_id})
            raise ProtocolError(ErrorCode.unavailable,
                                "conversations are unavailable for a moment; try again",
                                retryable=True) from exc
        if session is None or not session.owned_by(customer_id, resume_token):
            self.metrics.errors.labels(ErrorCode.unauthorized).inc()
            raise ProtocolError(ErrorCode.unauthorized, _REFUSED)
        if customer_id is not None and tuple(identity.groups) != session.groups:
            session.record.groups = list(identity.groups)  # the newest token says who it is
        # the queue is the truth (a wait may have been closed while nobody held the session)
        session.escalated = self.escalations.state(session.id) in (
            ConversationState.waiting, ConversationState.human)
        return Conversation(self, session, resumed=True, resume_token=None, client=client)

    async def customer_present(self, session: Session) -> None:
        """A waiting customer connected or left: their wait counts from now."""
        if self.escalations.state(session.id) is ConversationState.waiting:
            with contextlib.suppress(ProtocolError):
                await self.escalations.seen(session.id, 0.0)

    async def _recover(self, session: Session) -> None:
        pending = await self.sessions.interrupted_here(session)
        if pending is not None:
            log.info("re-running an interrupted turn",
                     extra={"session_id": session.id, "turn_id": pending.turn_id})
            await self.router.recover(session, pending)


def _rate_limited(message: str, wait_s: float) -> ProtocolError:
    exc = ProtocolError(ErrorCode.rate_limited, message, retryable=True)
    exc.retry_after_s = retry_after_s(wait_s)  # type: ignore[attr-defined]
    return exc


class Conversation:
    """One session, as its owner sees it through one transport."""

    def __init__(self, service: ChatService, session: Session, *, resumed: bool,
                 resume_token: str | None, client: Client | None = None) -> None:
        self._service = service
        self.session = session
        #: Who opened it (its address pays for every message); None outside a request.
        self.client = client
        #: The seconds the last rate refusal asked for (its ``error`` event carries them).
        self._retry_after_s: int | None = None
        #: Whether an existing session was opened.
        self.resumed = resumed
        #: For a new anonymous session: the secret that resumes it (sent once).
        self.resume_token = resume_token

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.session.id

    async def submit(self, text: str, *, message_id: str | None = None) -> str:
        """Accept a customer turn (barge-in on a turn in progress); returns its turn id."""
        check_text(text)
        session = self.session
        if message_id is not None and session.knows_message(message_id):
            raise ProtocolError(ErrorCode.duplicate_message,
                                f"message {message_id!r} was already received")
        if not session.limiter.take():
            self._service.metrics.refusals.labels("messages_per_session").inc()
            self._retry_after_s = retry_after_s(1 / session.limiter.per_s)
            raise _rate_limited("too many messages; slow down and try again shortly",
                                1 / session.limiter.per_s)
        if self.client is not None and (wait_s := self.client.take_message()) > 0:
            self._retry_after_s = retry_after_s(wait_s)
            raise _rate_limited("too many messages from your address; slow down and try "
                                "again shortly", wait_s)
        router = self._service.router
        await router.cancel(session)
        return await router.start_turn(session, text, message_id=message_id)

    async def cancel(self) -> None:
        """Stop the turn in progress."""
        if not await self._service.router.cancel(self.session):
            raise ProtocolError(ErrorCode.no_turn, "no reply is in progress")

    async def handoff(self, reason: str | None = None) -> None:
        """The customer asks for a person (the reason goes to the queue, not the history)."""
        await self._service.router.escalate(self.session, "customer_request", note=reason)

    async def settled(self, turn_id: str, *, timeout_s: float = 5.0) -> None:
        """Wait until the turn ``turn_id`` has finished everything it emits (its ``done`` and
        an escalation that follows it); returns at once if another turn is current."""
        session = self.session
        task, turn = session.turn_task, session.turn
        if task is not None and turn is not None and getattr(turn, "turn_id", None) == turn_id:
            await asyncio.wait({task}, timeout=timeout_s)

    def events(self, *, resume_from: int | None = None, maxsize: int = 256) -> EventStream:
        """The session's events for this connection: ``SessionOpened`` first, then the
        replay after ``resume_from``, then live events."""
        return EventStream(self, resume_from=resume_from, maxsize=maxsize)

    async def error(self, code: str, message: str) -> None:
        """Tell every listener of this session about a refused input (a ``rate_limited``
        one carries the ``retry_after_s`` the refusal asked for)."""
        self._service.metrics.errors.labels(code).inc()
        wait_s, self._retry_after_s = self._retry_after_s, None
        extra = {"retry_after_s": wait_s} if code == ErrorCode.rate_limited and wait_s else {}
        await self.session.emit(ErrorEvent(code=code, message=message, **extra))


class EventStream:
    """A connection's subscription: ``async with`` to connect, ``async for`` to read."""

    def __init__(self, conversation: Conversation, *, resume_from: int | None,
                 maxsize: int) -> None:
        self._conversation = conversation
        self._resume_from = resume_from
        self._queue: asyncio.Queue[ServerEvent] = asyncio.Queue(maxsize=maxsize)
        self._open = False

    async def __aenter__(self) -> EventStream:
        conversation = self._conversation
        session = conversation.session

        def head(after: int, complete: bool) -> list[ServerEvent]:
            first: list[ServerEvent] = [SessionOpened(
                session_id=session.id, seq=after, resumed=conversation.resumed,
                last_seq=session.seq, resume_token=conversation.resume_token,
                channel=session.channel)]
            if not complete:
                first.append(ErrorEvent(
                    session_id=session.id, seq=after, code=ErrorCode.resume_gap,
                    message="some events are no longer kept; replaying the rest"))
            return first

        await session.connect(self._queue, head, self._resume_from)
        self._open = True
        service = conversation._service
        await service.customer_present(session)
        with contextlib.suppress(Exception):
            await service.sessions.watch(session)
        await service._recover(session)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._open = False
        session = self._conversation.session
        session.unsubscribe(self._queue)
        service = self._conversation._service
        await service.sessions.unwatch_idle(session)
        await service.customer_present(session)

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self

    async def __anext__(self) -> ServerEvent:
        if not self._open:
            raise StopAsyncIteration
        return await self._queue.get()

    def get_nowait(self) -> ServerEvent | None:
        """The next event if one is already queued."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
