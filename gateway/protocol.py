"""The chat wire contract (docs/protocol.md §1): client messages in.

Client messages are validated with pydantic; anything that fails gets an ``error`` event
with one of the codes below and changes nothing. Server events are typed in
:mod:`gateway.events`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.errors import DuetError
from gateway.errors import validation_message

__all__ = [
    "MAX_TEXT_CHARS",
    "Cancel",
    "ChannelName",
    "ClientMessage",
    "ErrorCode",
    "Handoff",
    "Hello",
    "ProtocolError",
    "SendMessage",
    "load_json",
    "parse_client_message",
    "parse_frame",
]

MAX_TEXT_CHARS = 4000
SESSION_ID_PATTERN = r"^[A-Za-z0-9_\-]{8,64}$"


class ErrorCode:
    """The ``code`` of ``error`` events."""

    invalid_json = "invalid_json"
    invalid_message = "invalid_message"
    unknown_type = "unknown_type"
    empty_message = "empty_message"
    message_too_long = "message_too_long"
    binary_not_supported = "binary_not_supported"
    rate_limited = "rate_limited"
    duplicate_message = "duplicate_message"
    resume_gap = "resume_gap"
    no_turn = "no_turn"
    turn_failed = "turn_failed"
    unauthorized = "unauthorized"
    unavailable = "unavailable"
    fatal = "fatal"


class ProtocolError(DuetError):
    """A client message that cannot be accepted; becomes an ``error`` event (or, over
    plain HTTP, an error body)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code


SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
#: The company's signed JWT for a customer (docs/protocol.md §0).
CustomerToken = Annotated[str, StringConstraints(min_length=1, max_length=8192)]
#: An anonymous session's resume secret (from its first ``session`` event).
ResumeToken = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MessageId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
#: The channel a client names in ``hello`` (also a label of the session and the queue).
ChannelName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_\-]{0,31}$")]


class Customer(BaseModel):
    """The old, client-claimed identity: accepted for compatibility, grants nothing."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="The customer's id in the company's systems.")
    groups: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50, description="ACL groups the customer belongs to.")


class Hello(BaseModel):
    """Open or resume a session."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hello"] = Field(description="Message type.")
    session_id: SessionId | None = Field(None, description="Session to resume; absent: new.")
    customer_token: CustomerToken | None = Field(
        None, description="The company's signed JWT for this customer (groups, sub).")
    resume_token: ResumeToken | None = Field(
        None, description="An anonymous session's resume secret (from its `session` event).")
    customer: Customer | None = Field(
        None, description="Ignored: the old client-claimed identity grants nothing.")
    channel: ChannelName = Field("web", description="Channel the customer uses.")
    resume_from: int | None = Field(None, ge=0, description="Replay events with seq > this.")


class SendMessage(BaseModel):
    """One user turn."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = Field(description="Message type.")
    text: str = Field(description="What the customer said (1..4000 characters).")
    id: MessageId | None = Field(None, description="Client message id, for idempotent re-sends.")


class Cancel(BaseModel):
    """Stop the reply in progress (barge-in)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel"] = Field(description="Message type.")


class Handoff(BaseModel):
    """The customer asks for a human."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["handoff"] = Field(description="Message type.")
    reason: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        None, description="Why, in the customer's words.")


ClientMessage = Hello | SendMessage | Cancel | Handoff
_BY_TYPE: dict[str, type[BaseModel]] = {
    "hello": Hello, "message": SendMessage, "cancel": Cancel, "handoff": Handoff,
}


def load_json(raw: str | bytes) -> Any:
    """One JSON document, as strictly as the HTTP bodies are read (pydantic's parser).

    Raises :class:`ProtocolError` ``invalid_json`` for anything that is not one UTF-8 JSON
    document: invalid UTF-8 or lone surrogates (also as ``\\ud800`` escapes), a BOM,
    ``NaN``/``Infinity`` literals, numbers of more than 4300 digits, or nesting deeper than
    200 levels (refused without recursing further). A key given twice keeps its last value.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:
            raise ProtocolError(ErrorCode.invalid_json,
                                "not JSON: the text is not valid Unicode (lone surrogate)"
                                ) from exc
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:  # jiter's error names the problem and its position only
        raise ProtocolError(ErrorCode.invalid_json, f"not JSON: {exc}") from exc


def parse_frame(raw: str | bytes, models: Mapping[str, type[BaseModel]]) -> BaseModel:
    """Validate one JSON text frame against the model its ``type`` names (the chat and the
    supervisor sockets alike); raises :class:`ProtocolError` with a precise code."""
    data = load_json(raw)
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.invalid_message, "a message must be a JSON object")
    kind = data.get("type")
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError(ErrorCode.unknown_type,
                            f"unknown message type; expected one of {sorted(models)}")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ProtocolError(ErrorCode.invalid_message, validation_message(exc)) from exc


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Validate one chat-socket frame; raises :class:`ProtocolError` with a precise code."""
    message = parse_frame(raw, _BY_TYPE)
    if isinstance(message, SendMessage):
        check_text(message.text)
    return message  # type: ignore[return-value]


def check_text(text: str) -> None:
    """The rules of a turn's text: not blank, at most 4000 characters."""
    if not text.strip():
        raise ProtocolError(ErrorCode.empty_message, "message text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(ErrorCode.message_too_long,
                            f"message text has {len(text)} characters; at most {MAX_TEXT_CHARS}")
