"""Typed server events: what a conversation tells its customer, console and log.

Every transport renders these its own way (the chat websocket as JSON text frames, HTTP as
server-sent events or one JSON body, voice as speech plus JSON); none re-parses a dict.
``session_id`` and ``seq`` are stamped by the session when an event is emitted
(:meth:`ServerEvent.stamped`); ``turn_id`` ties an event to one turn. Numbers are finite:
NaN and infinities are not JSON, so an event holding one could not come back from its wire
form (:func:`parse_event`).

::

    ServerEvent
    ├── SessionOpened     first event of a connection (not logged: ``seq`` = resume point)
    ├── UserMessage       the customer's accepted message (logged: the transcript)
    ├── Delta             a piece of the one streamed reply (ack, answer, human, system)
    ├── Done              end of a turn: whole reply, citations, as_of, confidence, timings
    ├── Escalated         the conversation waits for a person
    ├── AgentJoined / AgentLeft   a supervisor took over / handed back
    └── ErrorEvent        bad input or a failure (``fatal`` closes the connection)
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "AgentJoined",
    "AgentLeft",
    "AgentRef",
    "CitationOut",
    "Delta",
    "DeltaSource",
    "Done",
    "ErrorEvent",
    "Escalated",
    "ServerEvent",
    "SessionOpened",
    "Timings",
    "UserMessage",
    "parse_event",
]

DeltaSource = Literal["ack", "answer", "human", "system"]


class ServerEvent(BaseModel):
    """Fields every server event carries."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    type: str = Field(description="Event type.")
    session_id: str | None = Field(None, description="The session (stamped on emit).")
    seq: int = Field(0, ge=0, description="Per-session sequence number (stamped on emit).")
    turn_id: str | None = Field(None, description="The turn this event belongs to, if any.")

    def stamped(self, session_id: str, seq: int) -> ServerEvent:
        """This event with its session id and sequence number."""
        return self.model_copy(update={"session_id": session_id, "seq": seq})

    def wire(self) -> dict[str, Any]:
        """The JSON object sent to clients (``turn_id`` omitted outside a turn)."""
        data = self.model_dump(mode="json")
        if data["turn_id"] is None:
            del data["turn_id"]
        return data


class SessionOpened(ServerEvent):
    """First event of every connection; ``seq`` is the point the replay starts after."""

    type: Literal["session"] = "session"
    resumed: bool = Field(description="Whether an existing session was resumed.")
    last_seq: int = Field(0, description="The newest seq of the session at connect time.")
    resume_token: str | None = Field(
        None, description="Anonymous sessions: the secret that resumes this session later.")
    channel: str | None = Field(None, description="The channel the session was opened on.")


class UserMessage(ServerEvent):
    """The customer's message, as accepted (the transcript's user side)."""

    type: Literal["user_message"] = "user_message"
    text: str = Field(description="What the customer said.")
    id: str | None = Field(None, description="The client's message id, if it sent one.")


class Delta(ServerEvent):
    """A piece of the one streamed reply, in display order."""

    type: Literal["delta"] = "delta"
    source: DeltaSource = Field(description="Who wrote it: ack, answer, human or system.")
    text: str = Field(description="Text to append.")


class CitationOut(BaseModel):
    """A document the answer is grounded in."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    doc_id: str = Field(description="Document id.")
    title: str = Field(description="Document title.")
    url: str | None = Field(None, description="Link to the document, if it has one.")
    version: int = Field(description="Document version the answer was built from.")
    updated_at: datetime | None = Field(None, description="When that version was applied (UTC).")


class Timings(BaseModel):
    """Milliseconds from the turn's start."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ack_first: float | None = Field(None, description="First acknowledgment delta.")
    answer_first: float | None = Field(None, description="First answer delta.")
    total: float = Field(description="The turn's end.")


class Done(ServerEvent):
    """End of a turn."""

    type: Literal["done"] = "done"
    text: str = Field(description="The whole reply (every delta of the turn, joined).")
    citations: list[CitationOut] = Field(default_factory=list, description="Sources.")
    as_of: datetime | None = Field(
        None, description="Newest event the index had applied when the answer was built.")
    confidence: float = Field(0.0, ge=0, le=1, description="Confidence the answer is right.")
    timings_ms: Timings = Field(description="Latencies of the turn.")
    decision: Literal["answer", "clarify", "fallback"] | None = Field(
        None, description="Answered, asked back, or said honestly it does not know.")
    prefetch_hit: bool | None = Field(None, description="Answered from the prefetch cache.")
    rewritten_query: str | None = Field(None, description="The self-contained query searched.")
    cancelled: bool = Field(False, description="The turn was stopped (cancel or barge-in).")
    interrupted: bool = Field(
        False, description="The gateway stopped mid-turn (restart); the turn was run again.")


class Escalated(ServerEvent):
    """The conversation waits for a person."""

    type: Literal["escalated"] = "escalated"
    reason: str = Field(description="Why (customer_request, anger, not_in_kb, …).")
    queue_position: int = Field(ge=1, description="1-based position in the human queue.")
    message: str | None = Field(
        None, description="What happens next, for the customer (and whether anyone is online).")
    supervisors_online: int | None = Field(None, ge=0, description="Supervisors online now.")


class AgentRef(BaseModel):
    """A human supervisor."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(description="Supervisor id.")
    name: str = Field(description="Name shown to the customer.")


class AgentJoined(ServerEvent):
    """A supervisor took over the conversation."""

    type: Literal["agent_joined"] = "agent_joined"
    agent: AgentRef = Field(description="Who joined.")


class AgentLeft(ServerEvent):
    """The supervisor handed the conversation back to the bot."""

    type: Literal["agent_left"] = "agent_left"
    agent: AgentRef = Field(description="Who left.")


class ErrorEvent(ServerEvent):
    """Bad input or a failure; the connection stays usable unless ``code`` is ``fatal``."""

    type: Literal["error"] = "error"
    code: str = Field(description="Machine-readable error code.")
    message: str = Field(description="What was wrong, for a person.")
    retry_after_s: int | None = Field(
        None, ge=0, description="rate_limited: seconds to wait before trying again.")

    def wire(self) -> dict[str, Any]:
        """As every event, without ``retry_after_s`` when the error has none."""
        data = super().wire()
        if data.get("retry_after_s") is None:
            data.pop("retry_after_s", None)
        return data


AnyEvent = Annotated[
    SessionOpened | UserMessage | Delta | Done | Escalated | AgentJoined | AgentLeft | ErrorEvent,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyEvent)


def parse_event(data: bytes | str | dict[str, Any]) -> ServerEvent:
    """An event back from its JSON form (the durable log, another gateway process)."""
    if isinstance(data, dict):
        return _ADAPTER.validate_python(data)
    return _ADAPTER.validate_json(data)
