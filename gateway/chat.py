"""``GET /v1/chat`` (websocket) and ``POST /v1/chat`` (JSON or SSE): PROTOCOL.md §1."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.errors import validation_message
from gateway.escalations import EscalationQueue
from gateway.protocol import (
    Cancel,
    Customer,
    ErrorCode,
    Handoff,
    Hello,
    ProtocolError,
    UserMessage,
    check_text,
    event,
    parse_client_message,
)
from gateway.router import TurnRouter
from gateway.sessions import Session, SessionStore

__all__ = ["ChatService", "routes"]

log = logging.getLogger("duet.gateway")


class ChatService:
    """Sessions, the router and the escalation queue, shared by every chat endpoint."""

    def __init__(self, sessions: SessionStore, router: TurnRouter,
                 escalations: EscalationQueue) -> None:
        self.sessions = sessions
        self.router = router
        self.escalations = escalations

    async def attach(self, session: Session, queue: asyncio.Queue[dict[str, Any]], *,
                     resumed: bool, resume_from: int | None) -> None:
        """Send ``session`` (and the replay) to a new connection, then subscribe it."""

        def head(after: int, complete: bool) -> list[dict[str, Any]]:
            first = [event("session", session_id=session.id, seq=after, resumed=resumed,
                           last_seq=session.seq)]
            if not complete:
                first.append(event("error", session_id=session.id, seq=after,
                                   code=ErrorCode.resume_gap,
                                   message="some events are no longer kept; replaying the rest"))
            return first

        await session.connect(queue, head, resume_from)

    async def submit(self, session: Session, message: UserMessage) -> str | None:
        """Accept a user turn (barge-in on a turn in progress); returns its turn id."""
        if not session.limiter.take():
            raise ProtocolError(ErrorCode.rate_limited,
                                "too many messages; slow down and try again shortly")
        if message.id is not None and session.seen_before(message.id):
            raise ProtocolError(ErrorCode.duplicate_message,
                                    f"message {message.id!r} was already received")
        await self.router.cancel(session)
        return self.router.start_turn(session, message.text)

    async def cancel(self, session: Session) -> None:
        """Stop the turn in progress."""
        if not await self.router.cancel(session):
            raise ProtocolError(ErrorCode.no_turn, "no reply is in progress")

    async def handoff(self, session: Session, reason: str | None) -> None:
        """The customer asks for a person."""
        session.escalated = False  # an explicit request always (re)announces the queue
        await self.router.escalate(session, "customer_request")
        if reason:
            session.history.append(("user", f"[handoff] {reason}"))


class _Connection:
    """One chat websocket: a receiver loop and a sender task, in one task group."""

    def __init__(self, ws: WebSocket, chat: ChatService, metrics: Any) -> None:
        self.ws = ws
        self.chat = chat
        self.metrics = metrics
        self.session: Session | None = None
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                sender = group.create_task(self._send_loop())
                await self._receive_loop()
                sender.cancel()
        finally:
            if self.session is not None:
                self.session.unsubscribe(self.queue)

    async def _send_loop(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self.ws.send_text(json.dumps(item))
            except (WebSocketDisconnect, RuntimeError, OSError):
                return

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                if message.get("bytes") is not None:
                    raise ProtocolError(ErrorCode.binary_not_supported,
                                        "the chat socket takes JSON text frames only")
                await self._dispatch(parse_client_message(message.get("text") or ""))
            except ProtocolError as exc:
                await self._error(exc.code, exc.message)

    async def _error(self, code: str, message: str) -> None:
        self.metrics.errors.labels(code).inc()
        if self.session is not None:
            await self.session.emit(event("error", code=code, message=message))
        else:
            await self.queue.put(event("error", session_id=None, seq=0, code=code,
                                       message=message))

    async def _open(self, hello: Hello | None) -> Session:
        customer = hello.customer if hello else None
        session, resumed = self.chat.sessions.open(
            hello.session_id if hello else None, channel=hello.channel if hello else "web",
            customer_id=customer.id if customer else None,
            groups=tuple(customer.groups) if customer else (),
        )
        self.session = session
        await self.chat.attach(session, self.queue, resumed=resumed,
                               resume_from=hello.resume_from if hello else None)
        return session

    async def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, Hello):
            if self.session is not None:
                raise ProtocolError(ErrorCode.invalid_message,
                                    "this connection already has a session")
            await self._open(msg)
            return
        session = self.session or await self._open(None)
        if isinstance(msg, UserMessage):
            await self.chat.submit(session, msg)
        elif isinstance(msg, Cancel):
            await self.chat.cancel(session)
        elif isinstance(msg, Handoff):
            await self.chat.handoff(session, msg.reason)


async def chat_websocket(ws: WebSocket) -> None:
    """The chat websocket."""
    state = ws.app.state.duet
    await ws.accept()
    await _Connection(ws, state.chat, state.metrics).run()


class ChatRequest(BaseModel):
    """The plain HTTP form of one turn."""

    model_config = ConfigDict(extra="forbid")

    session_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]{8,64}$",
                                   description="Session to continue; absent: a new one.")
    text: str = Field(description="What the customer said (1..4000 characters).")
    customer: Customer | None = Field(None, description="Customer id and ACL groups.")
    id: str | None = Field(None, max_length=128, description="Client message id.")


def _refuse(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"type": "error", "code": code, "message": message}, status_code=status)


async def chat_http(request: Request) -> Response:
    """One turn over plain HTTP: a JSON body shaped like ``done``, or SSE of every event."""
    state = request.app.state.duet
    chat: ChatService = state.chat
    try:
        body = ChatRequest.model_validate_json(await request.body())
        check_text(body.text)
    except pydantic.ValidationError as exc:
        return _refuse(ErrorCode.invalid_message, validation_message(exc), 422)
    except ProtocolError as exc:
        return _refuse(exc.code, exc.message, 413 if exc.code == ErrorCode.message_too_long else 422)
    customer = body.customer
    session, _ = chat.sessions.open(body.session_id, channel="http",
                                    customer_id=customer.id if customer else None,
                                    groups=tuple(customer.groups) if customer else ())
    queue = session.subscribe()
    try:
        turn_id = await chat.submit(session, UserMessage(type="message", text=body.text, id=body.id))
    except ProtocolError as exc:
        session.unsubscribe(queue)
        return _refuse(exc.code, exc.message, 429 if exc.code == ErrorCode.rate_limited else 409)
    task = session.turn_task
    assert task is not None

    async def events() -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    while not queue.empty():
                        item = queue.get_nowait()
                        if item.get("turn_id") == turn_id:
                            yield item
                    return
                item = getter.result()
                if item.get("turn_id") == turn_id:
                    yield item
        finally:
            session.unsubscribe(queue)

    if "text/event-stream" in request.headers.get("accept", ""):
        async def sse() -> AsyncIterator[str]:
            async for item in events():
                yield f"event: {item['type']}\ndata: {json.dumps(item)}\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    done: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    async for item in events():
        if item["type"] == "done":
            done = item
        elif item["type"] in ("escalated", "error"):
            extra[item["type"]] = item
    if done is None:
        error = extra.get("error", {"code": ErrorCode.turn_failed, "message": "no answer"})
        return _refuse(error["code"], error["message"], 500)
    return JSONResponse({**done, **extra})


routes = [WebSocketRoute("/v1/chat", chat_websocket), Route("/v1/chat", chat_http, methods=["POST"])]
