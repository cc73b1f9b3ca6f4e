"""The supervisor socket ``GET /v1/supervisor`` (docs/protocol.md §3) and the desk behind it.

A supervisor signs in with a bearer token of ``DUET_SUPERVISOR_TOKENS`` (browsers:
``?token=``); a missing or wrong token is refused before the upgrade. Then:

- on connect: ``queue`` (waiting conversations, the ones this supervisor holds, who is
  online), then a ``conversation`` for each conversation it holds (a reconnecting console
  finds its state again); live ``escalation`` events for new waiting conversations and a
  fresh ``queue`` on every other change, from every gateway process (the queue's mirror);
- ``claim {session_id}`` → ``conversation``: transcript, the documents the bot cited with
  their versions, reason, channel and customer; the customer gets ``agent_joined``;
- customer messages arrive as ``customer_message``, each followed (agent-assist) by a
  ``suggestion``: the retrieval agent's grounded draft with citations and ``as_of``, for
  this supervisor only (never in the customer's log);
- ``message {session_id, text}`` reaches the customer as ``delta`` with ``source: "human"``
  (and its ``done``); ``release`` hands back to the bot (its next turns see the person's
  words in their history; the customer gets ``agent_left``); ``close`` ends it.

Bad input gets an ``error`` event and the socket stays usable. Every action, refused ones
included, goes to the audit log (:mod:`gateway.audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agents.retrieval import AnswerFinal, PrefetchCache, TurnContext
from gateway.auth import require_operator
from gateway.escalations import Change, ConversationRecord, ConversationState
from gateway.events import (
    AgentJoined,
    AgentLeft,
    AgentRef,
    Delta,
    Done,
    Escalated,
    ServerEvent,
    UserMessage,
)
from gateway.protocol import SESSION_ID_PATTERN, ErrorCode, ProtocolError, check_text, parse_frame
from gateway.service import ChatService
from gateway.sessions import HISTORY_TURNS, Session

__all__ = ["SupervisorDesk", "parse_supervisor_message", "routes"]

log = logging.getLogger("duet.gateway")

SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Claim(_Base):
    """Take a waiting conversation."""

    type: Literal["claim"] = Field(description="Message type.")
    session_id: SessionId = Field(description="The conversation.")


class Message(_Base):
    """Words for the customer."""

    type: Literal["message"] = Field(description="Message type.")
    session_id: SessionId = Field(description="The conversation.")
    text: str = Field(description="1..4000 characters.")


class Release(_Base):
    """Hand the conversation back to the bot."""

    type: Literal["release"] = Field(description="Message type.")
    session_id: SessionId = Field(description="The conversation.")


class Close(_Base):
    """End the conversation."""

    type: Literal["close"] = Field(description="Message type.")
    session_id: SessionId = Field(description="The conversation.")


SupervisorMessage = Claim | Message | Release | Close
_BY_TYPE: dict[str, type[BaseModel]] = {
    "claim": Claim, "message": Message, "release": Release, "close": Close}


def parse_supervisor_message(raw: str) -> SupervisorMessage:
    """Validate one supervisor frame; raises :class:`ProtocolError` with a precise code."""
    message = parse_frame(raw, _BY_TYPE)
    if isinstance(message, Message):
        check_text(message.text)
    return message  # type: ignore[return-value]


def _citation(c: Any) -> dict[str, Any]:
    updated = getattr(c, "updated_at", None)
    return {"doc_id": c.doc_id, "title": c.title, "url": c.url, "version": c.version,
            "updated_at": updated.isoformat() if isinstance(updated, datetime) else updated}


def transcript(events: Sequence[ServerEvent]) -> tuple[list[dict[str, Any]],
                                                       list[dict[str, Any]]]:
    """The conversation as lines (customer, bot, human, system) and the documents the bot
    cited, newest version of each, from a session's logged events."""
    sources: dict[str, str] = {}
    lines: list[dict[str, Any]] = []
    documents: dict[str, dict[str, Any]] = {}
    for event in events:
        if isinstance(event, UserMessage):
            lines.append({"seq": event.seq, "role": "customer", "text": event.text})
        elif isinstance(event, Delta) and event.turn_id is None:
            if event.source in ("human", "system"):  # words of their own, outside a turn
                lines.append({"seq": event.seq, "role": event.source, "text": event.text})
        elif isinstance(event, Delta):
            sources.setdefault(event.turn_id, event.source)
        elif isinstance(event, Done) and event.text and not event.cancelled:
            source = sources.get(event.turn_id or "", "answer")
            role = {"human": "human", "system": "system"}.get(source, "bot")
            line: dict[str, Any] = {"seq": event.seq, "role": role, "text": event.text}
            if role == "bot":
                line |= {"citations": [_citation(c) for c in event.citations],
                         "as_of": event.as_of.isoformat() if event.as_of else None,
                         "confidence": event.confidence, "decision": event.decision}
                for c in event.citations:
                    known = documents.get(c.doc_id)
                    if known is None or known["version"] < c.version:
                        documents[c.doc_id] = _citation(c)
            lines.append(line)
        elif isinstance(event, Escalated):
            lines.append({"seq": event.seq, "role": "system",
                          "text": f"escalated ({event.reason}), queue position "
                                  f"{event.queue_position}"})
        elif isinstance(event, AgentJoined | AgentLeft):
            verb = "joined" if isinstance(event, AgentJoined) else "left"
            lines.append({"seq": event.seq, "role": "system",
                          "text": f"{event.agent.name} {verb}"})
    return lines, list(documents.values())


class SupervisorDesk:
    """What supervisors do to conversations, over the chat service's sessions."""

    def __init__(self, chat: ChatService, *, assist: bool = True) -> None:
        self.chat = chat
        self.queue = chat.escalations
        self.audit = chat.router.audit
        self.assist = assist
        self._caches: dict[str, PrefetchCache] = {}

    async def snapshot(self, agent: str) -> dict[str, Any]:
        """The ``queue`` event for ``agent``."""
        now = datetime.now(UTC)
        return {"type": "queue",
                "waiting": [r.summary(now) for r in self.queue.waiting()],
                "mine": [r.summary(now) for r in self.queue.held_by(agent)],
                "online": await self.queue.online()}

    async def session(self, session_id: str) -> Session:
        """The session (loaded here if another process holds it). One held here needs no
        refresh: its appends are compare-and-set, so an emit after another process's
        events reads them first."""
        held = self.chat.sessions.held(session_id)
        if held is not None:
            return held
        session = await self.chat.sessions.get(session_id)
        if session is None:
            raise ProtocolError("unknown_session", "no such conversation")
        return session

    async def claim(self, agent: str, session_id: str) -> Session:
        """waiting → human: the customer is told who joined."""
        try:
            await self.queue.claim(session_id, agent)
        except ProtocolError as exc:
            await self.audit.record(agent, "refused", session_id, attempt="claim", code=exc.code)
            raise
        session = await self.session(session_id)
        await self.chat.router.cancel(session)  # a bot turn in progress here stops
        session.escalated = True
        await asyncio.gather(session.emit(AgentJoined(agent=AgentRef(id=agent, name=agent))),
                             self.audit.record(agent, "claim", session_id))
        return session

    def conversation(self, session: Session, record: ConversationRecord | None
                     ) -> dict[str, Any]:
        """The ``conversation`` event: transcript, cited documents, reason, customer."""
        lines, documents = transcript(list(session.log))
        summary = record.summary() if record is not None else {"session_id": session.id}
        return {"type": "conversation", **summary, "channel": session.channel,
                "customer_id": session.customer_id, "transcript": lines,
                "documents": documents,
                "transitions": [t.model_dump(mode="json") for t in record.transitions]
                if record is not None else []}

    async def _holder(self, agent: str, session_id: str, attempt: str) -> Session:
        try:
            self.queue.check_holder(session_id, agent)
        except ProtocolError as exc:
            await self.audit.record(agent, "refused", session_id, attempt=attempt, code=exc.code)
            raise
        return await self.session(session_id)

    async def send(self, agent: str, session_id: str, text: str) -> None:
        """A person's words to the customer: a ``human`` delta of its own (no turn)."""
        check_text(text)
        session = await self._holder(agent, session_id, "message")
        await asyncio.gather(session.emit(Delta(source="human", text=text)),
                             self.audit.record(agent, "message", session_id, chars=len(text)))

    async def release(self, agent: str, session_id: str) -> None:
        """human → bot; the person's exchange goes into the bot's history first."""
        session = await self._holder(agent, session_id, "release")
        await session.refresh()  # every customer message, wherever it was written
        self._keep_exchange(session)
        await session.save()
        await self.queue.release(session_id, agent)
        session.escalated = False
        await session.emit(AgentLeft(agent=AgentRef(id=agent, name=agent)))
        await self.audit.record(agent, "release", session_id)
        self._caches.pop(session_id, None)

    async def close(self, agent: str, session_id: str) -> None:
        """human → closed."""
        session = await self._holder(agent, session_id, "close")
        await session.refresh()  # every customer message, wherever it was written
        self._keep_exchange(session)
        await session.save()
        await self.queue.close(session_id, agent)
        session.escalated = False
        await session.emit(AgentLeft(agent=AgentRef(id=agent, name=agent)))
        await self.audit.record(agent, "close", session_id)
        self._caches.pop(session_id, None)

    @staticmethod
    def _keep_exchange(session: Session) -> None:
        """Append what the customer and the person said since the person joined."""
        events = list(session.log)
        start = max((i for i, e in enumerate(events) if isinstance(e, AgentJoined)), default=-1)
        for event in events[start + 1:]:
            if isinstance(event, UserMessage):
                session.record.history.append(("user", event.text))
            elif isinstance(event, Delta) and event.source == "human":
                session.record.history.append(("assistant", event.text))
        del session.record.history[:-2 * HISTORY_TURNS]

    async def suggest(self, session: Session, text: str, for_seq: int) -> dict[str, Any] | None:
        """Agent-assist: the retrieval agent's grounded draft for the supervisor only."""
        retrieval = self.chat.router.retrieval
        cache = self._caches.setdefault(session.id, PrefetchCache())
        lines, _ = transcript(list(session.log))
        history = list(session.history) + [
            ("user" if line["role"] == "customer" else "assistant", line["text"])
            for line in lines[-8:] if line["role"] in ("customer", "human")
            and line["seq"] < for_seq]
        context = TurnContext(session_id=session.id, text=text, history=history,
                              groups=session.groups, cache=cache, on_search=lambda: None)
        final: AnswerFinal | None = None
        stream = retrieval.stream(context)
        async with contextlib.aclosing(stream):
            async for item in stream:
                if isinstance(item, AnswerFinal):
                    final = item
        if final is None or not final.text.strip():
            return None
        return {"type": "suggestion", "session_id": session.id, "for_seq": for_seq,
                "text": final.text, "citations": [_citation(c) for c in final.citations],
                "as_of": final.as_of.isoformat() if final.as_of else None,
                "confidence": round(min(1.0, max(0.0, final.confidence)), 4),
                "decision": final.decision}


class _Followed:
    """A conversation this socket holds: its session subscription and forwarding task."""

    def __init__(self, session: Session, queue: asyncio.Queue[ServerEvent],
                 task: asyncio.Task[None]) -> None:
        self.session = session
        self.queue = queue
        self.task = task


class _SupervisorConnection:
    """One supervisor socket."""

    def __init__(self, ws: WebSocket, desk: SupervisorDesk, agent: str) -> None:
        self.ws = ws
        self.desk = desk
        self.agent = agent
        self.connection = uuid.uuid4().hex
        self._send_lock = asyncio.Lock()
        self._followed: dict[str, _Followed] = {}
        self._group: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        queue = self.desk.queue
        await queue.announce(self.agent, self.connection)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                presence = group.create_task(queue.keep_announcing(self.agent, self.connection))
                with queue.listen() as changes:
                    await self._send(await self.desk.snapshot(self.agent))
                    for record in queue.held_by(self.agent):
                        with contextlib.suppress(ProtocolError):
                            await self._open(await self.desk.session(record.session_id))
                    feed = group.create_task(self._feed(changes))
                    await self._receive_loop()
                feed.cancel()
                presence.cancel()
                for followed in list(self._followed.values()):
                    followed.task.cancel()
        finally:
            for session_id in list(self._followed):
                await self._unfollow(session_id)
            await queue.withdraw(self.connection)

    async def _send(self, data: dict[str, Any]) -> bool:
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(data))
                return True
            except (WebSocketDisconnect, RuntimeError, OSError):
                return False

    async def _error(self, code: str, message: str, session_id: str | None = None) -> None:
        self.desk.chat.metrics.errors.labels(code).inc()
        await self._send({"type": "error", "code": code, "message": message,
                          "session_id": session_id})

    async def _feed(self, changes: asyncio.Queue[Change]) -> None:
        while True:
            change = await changes.get()
            record = change.record
            if (record.state is ConversationState.waiting
                    and change.before is not ConversationState.waiting):
                await self._send({"type": "escalation", **record.summary(),
                                  "queue_position": self.desk.queue.position(record.session_id)})
            else:
                await self._send(await self.desk.snapshot(self.agent))
            if record.session_id in self._followed and not (
                    record.state is ConversationState.human and record.agent == self.agent):
                await self._unfollow(record.session_id)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            session_id = None
            try:
                if message.get("bytes") is not None:
                    raise ProtocolError(ErrorCode.binary_not_supported,
                                        "the supervisor socket takes JSON text frames only")
                msg = parse_supervisor_message(message.get("text") or "")
                session_id = msg.session_id
                await self._dispatch(msg)
            except ProtocolError as exc:
                await self._error(exc.code, exc.message, session_id)
            except Exception:
                log.exception("supervisor action failed", extra={"session_id": session_id})
                await self._error(ErrorCode.unavailable, "that did not work; try again",
                                  session_id)

    async def _dispatch(self, msg: SupervisorMessage) -> None:
        desk, agent = self.desk, self.agent
        if isinstance(msg, Claim):
            session = await desk.claim(agent, msg.session_id)
            await self._open(session)
        elif isinstance(msg, Message):
            await desk.send(agent, msg.session_id, msg.text)
        elif isinstance(msg, Release):
            await desk.release(agent, msg.session_id)
            await self._unfollow(msg.session_id)
            await self._send({"type": "released", "session_id": msg.session_id})
        elif isinstance(msg, Close):
            await desk.close(agent, msg.session_id)
            await self._unfollow(msg.session_id)
            await self._send({"type": "closed", "session_id": msg.session_id})

    async def _open(self, session: Session) -> None:
        """Send the ``conversation`` and follow the session's live events."""
        if session.id in self._followed:
            await self._unfollow(session.id)
        queue = session.subscribe()
        with contextlib.suppress(Exception):
            await self.desk.chat.sessions.watch(session)
        await self._send(self.desk.conversation(session, self.desk.queue.get(session.id)))
        assert self._group is not None
        task = self._group.create_task(self._forward(session, queue))
        self._followed[session.id] = _Followed(session, queue, task)

    async def _unfollow(self, session_id: str) -> None:
        followed = self._followed.pop(session_id, None)
        if followed is None:
            return
        followed.task.cancel()
        followed.session.unsubscribe(followed.queue)
        await self.desk.chat.sessions.unwatch_idle(followed.session)

    async def _forward(self, session: Session, queue: asyncio.Queue[ServerEvent]) -> None:
        while True:
            event = await queue.get()
            if not isinstance(event, UserMessage):
                continue
            await self._send({"type": "customer_message", "session_id": session.id,
                              "seq": event.seq, "text": event.text})
            if self.desk.assist and self._group is not None:
                self._group.create_task(self._suggest(session, event))

    async def _suggest(self, session: Session, event: UserMessage) -> None:
        try:
            suggestion = await self.desk.suggest(session, event.text, event.seq)
        except Exception:
            log.exception("agent-assist failed", extra={"session_id": session.id})
            return
        if suggestion is not None and session.id in self._followed:
            await self._send(suggestion)


def _desk(ws: WebSocket) -> SupervisorDesk:
    state = ws.app.state
    desk = getattr(state, "duet_desk", None)
    if desk is None:
        duet = state.duet
        assert duet.chat is not None
        desk = SupervisorDesk(duet.chat, assist=duet.settings.agent_assist)
        state.duet_desk = desk
    return desk


@require_operator("supervisor")
async def supervisor_socket(ws: WebSocket) -> None:
    """``GET /v1/supervisor``: refused before the upgrade without a supervisor token."""
    agent = ws.scope["duet.operator"]
    await ws.accept()
    await _SupervisorConnection(ws, _desk(ws), agent).run()


routes: list[BaseRoute] = [WebSocketRoute("/v1/supervisor", supervisor_socket)]
