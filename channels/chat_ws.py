"""The chat websocket, ``GET /v1/chat``: JSON text frames both ways (docs/protocol.md §1).

One connection is a receiver loop and a sender task in one task group. Before a session is
open, errors go straight to the socket (``session_id: null``); after, they are events of the
session (logged, so a resumed connection sees them too).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from core.errors import DuetError
from core.settings import Settings
from gateway.channel import Channel
from gateway.events import ErrorEvent
from gateway.protocol import (
    Cancel,
    ClientMessage,
    ErrorCode,
    Handoff,
    Hello,
    ProtocolError,
    SendMessage,
    parse_client_message,
)
from gateway.service import Conversation, EventStream
from gateway.state import AppState

__all__ = ["ChatWebsocket", "channel"]

log = logging.getLogger("duet.channels")


class _Connection:
    """One chat websocket."""

    def __init__(self, ws: WebSocket, state: AppState) -> None:
        self.ws = ws
        self.state = state
        self.conversation: Conversation | None = None
        self.stream: EventStream | None = None
        self._send_lock = asyncio.Lock()
        self._group: asyncio.TaskGroup | None = None
        self._sender: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await self._receive_loop()
                if self._sender is not None:  # the peer is gone: nothing left to send to
                    self._sender.cancel()
        finally:
            if self.stream is not None:
                await self.stream.__aexit__(None, None, None)

    async def _send(self, data: dict) -> bool:
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(data))
                return True
            except (WebSocketDisconnect, RuntimeError, OSError):
                return False

    async def _send_loop(self, stream: EventStream) -> None:
        async for item in stream:
            if not await self._send(item.wire()):
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
        if self.conversation is not None:
            await self.conversation.error(code, message)
        else:
            self.state.metrics.errors.labels(code).inc()
            await self._send(ErrorEvent(code=code, message=message).wire())

    async def _open(self, hello: Hello | None) -> Conversation:
        try:
            identity = self.state.customer_tokens.verify(hello.customer_token if hello else None)
        except DuetError as exc:
            self.state.metrics.errors.labels(ErrorCode.unauthorized).inc()
            raise ProtocolError(ErrorCode.unauthorized,
                                "the customer token was not accepted") from exc
        chat = self.state.chat
        assert chat is not None
        conversation = await chat.open(
            identity, channel=hello.channel if hello else "web",
            session_id=hello.session_id if hello else None,
            resume_token=hello.resume_token if hello else None)
        stream = conversation.events(resume_from=hello.resume_from if hello else None)
        await stream.__aenter__()
        self.conversation, self.stream = conversation, stream
        assert self._group is not None
        self._sender = self._group.create_task(self._send_loop(stream))
        return conversation

    async def _dispatch(self, msg: ClientMessage) -> None:
        if isinstance(msg, Hello):
            if self.conversation is not None:
                raise ProtocolError(ErrorCode.invalid_message,
                                    "this connection already has a session")
            await self._open(msg)
            return
        conversation = self.conversation or await self._open(None)
        if isinstance(msg, SendMessage):
            await conversation.submit(msg.text, message_id=msg.id)
        elif isinstance(msg, Cancel):
            await conversation.cancel()
        elif isinstance(msg, Handoff):
            await conversation.handoff(msg.reason)


async def chat_websocket(ws: WebSocket) -> None:
    """The chat websocket."""
    await ws.accept()
    await _Connection(ws, ws.app.state.duet).run()


class ChatWebsocket(Channel):
    """``GET /v1/chat``."""

    name = "chat_ws"

    def routes(self) -> Sequence[BaseRoute]:
        return [WebSocketRoute("/v1/chat", chat_websocket)]


def channel(settings: Settings) -> Channel:
    """Entry point: the chat websocket channel."""
    return ChatWebsocket()
