"""``POST /v1/chat``: one turn over plain HTTP (docs/protocol.md §1).

``Accept: text/event-stream`` streams the session's ``session`` event and then the turn's
events as server-sent events; otherwise the answer is one JSON body shaped like ``done``
(with ``escalated`` and, for a new anonymous session, ``resume_token`` beside it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from core.errors import DuetError
from core.settings import Settings
from gateway.channel import Channel
from gateway.errors import error_response, validation_message
from gateway.events import Done, ErrorEvent, Escalated, ServerEvent
from gateway.protocol import (
    Customer,
    CustomerToken,
    ErrorCode,
    MessageId,
    ProtocolError,
    ResumeToken,
    SessionId,
)
from gateway.service import Conversation, EventStream
from gateway.state import AppState

__all__ = ["ChatHttp", "ChatRequest", "channel"]

class ChatRequest(BaseModel):
    """The plain HTTP form of one turn."""

    model_config = ConfigDict(extra="forbid")

    session_id: SessionId | None = Field(None, description="Session to continue; absent: new.")
    text: str = Field(description="What the customer said (1..4000 characters).")
    customer_token: CustomerToken | None = Field(None, description="The customer's JWT.")
    resume_token: ResumeToken | None = Field(None, description="An anonymous session's secret.")
    customer: Customer | None = Field(None, description="Ignored: grants nothing.")
    id: MessageId | None = Field(None, description="Client message id.")


def _refuse(code: str, message: str) -> JSONResponse:
    """The one error edge's answer for a chat refusal (status by code, Retry-After on 503)."""
    return error_response(ProtocolError(code, message))


async def _turn_events(stream: EventStream, turn_id: str) -> AsyncIterator[ServerEvent]:
    """The turn's events, up to its ``done``."""
    async for item in stream:
        if item.turn_id != turn_id:
            continue
        yield item
        if isinstance(item, Done):
            return


async def chat_http(request: Request) -> Response:
    """One turn over plain HTTP."""
    state: AppState = request.app.state.duet
    try:
        body = ChatRequest.model_validate_json(await request.body())
    except pydantic.ValidationError as exc:
        return _refuse(ErrorCode.invalid_message, validation_message(exc))
    try:
        identity = state.customer_tokens.verify(body.customer_token)
    except DuetError:
        return _refuse(ErrorCode.unauthorized, "the customer token was not accepted")
    chat = state.chat
    assert chat is not None
    try:
        conversation = await chat.open(identity, channel="http", session_id=body.session_id,
                                       resume_token=body.resume_token)
        stream = conversation.events()
        await stream.__aenter__()
    except ProtocolError as exc:
        return error_response(exc)  # keeps its retry_after_s (Retry-After)
    try:
        opened = await anext(stream)
        turn_id = await conversation.submit(body.text, message_id=body.id)
    except ProtocolError as exc:
        await stream.__aexit__(None, None, None)
        return error_response(exc)
    except BaseException:
        await stream.__aexit__(None, None, None)
        raise
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_sse(stream, opened, turn_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await _json_reply(conversation, stream, turn_id)


async def _sse(stream: EventStream, opened: ServerEvent, turn_id: str) -> AsyncIterator[str]:
    try:
        yield _sse_frame(opened)
        async for item in _turn_events(stream, turn_id):
            yield _sse_frame(item)
    finally:
        await stream.__aexit__(None, None, None)


def _sse_frame(item: ServerEvent) -> str:
    return f"event: {item.type}\ndata: {json.dumps(item.wire())}\n\n"


async def _json_reply(conversation: Conversation, stream: EventStream, turn_id: str
                      ) -> Response:
    done: Done | None = None
    extra: dict[str, Any] = {}
    error: ErrorEvent | None = None
    try:
        async for item in _turn_events(stream, turn_id):
            if isinstance(item, Done):
                done = item
            elif isinstance(item, ErrorEvent):
                error = item
            elif isinstance(item, Escalated):
                extra["escalated"] = item.wire()
        await conversation.settled(turn_id)  # an escalation follows its turn's ``done``
        while (late := stream.get_nowait()) is not None:
            if isinstance(late, Escalated):
                extra["escalated"] = late.wire()
    finally:
        await stream.__aexit__(None, None, None)
    if error is not None or done is None:
        code = error.code if error else ErrorCode.turn_failed
        return _refuse(code, error.message if error else "no answer")
    if conversation.resume_token:
        extra["resume_token"] = conversation.resume_token
    return JSONResponse({**done.wire(), **extra})


class ChatHttp(Channel):
    """``POST /v1/chat``."""

    name = "chat_http"

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/v1/chat", chat_http, methods=["POST"])]


def channel(settings: Settings) -> Channel:
    """Entry point: the plain HTTP chat channel."""
    return ChatHttp()
