"""What goes into a retrieval turn and what comes out of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from agents.escalation import EscalationFlag
from agents.retrieval.cache import PrefetchCache
from ingest.kb import Hit

__all__ = ["AnswerDelta", "AnswerFinal", "Citation", "Decision", "TurnContext"]

#: How the agent answered: from the documents, with a question back, or honestly not.
Decision = Literal["answer", "clarify", "fallback"]


@dataclass(frozen=True)
class Citation:
    """A document an answer is grounded in."""

    doc_id: str
    title: str
    url: str | None
    version: int
    updated_at: datetime

    @classmethod
    def from_hit(cls, hit: Hit) -> Citation:
        """The citation of the document a chunk belongs to."""
        return cls(hit.doc_id, hit.title, hit.url, hit.version, hit.updated_at)


@dataclass(frozen=True)
class AnswerDelta:
    """A streamed piece of the answer; the pieces concatenate to the final text."""

    text: str


@dataclass(frozen=True)
class AnswerFinal:
    """The end of a turn: the whole answer and everything decided on the way."""

    #: The whole answer (the deltas joined).
    text: str
    #: Documents the answer is grounded in.
    citations: list[Citation]
    #: The newest event the index had applied when the answer was built.
    as_of: datetime | None
    #: Calibrated confidence in [0, 1] that the top document answers the query.
    confidence: float
    #: Answered, asked back, or fell back.
    decision: Decision
    #: The self-contained query that was searched.
    rewritten_query: str
    #: Whether the answer came from the session's prefetch cache (no search).
    prefetch_hit: bool
    #: Why a person should take over (an escalation flag's value), or None.
    escalate_reason: str | None
    #: The retrieved chunks, best first (for the supervisor).
    hits: list[Hit] = field(default_factory=list)


@dataclass
class TurnContext:
    """One customer turn and the session state it needs (LangGraph's runtime context)."""

    #: The session the turn belongs to.
    session_id: str
    #: The customer's message.
    text: str
    #: Earlier turns as (role "user"/"assistant", text), oldest first, without this one.
    history: list[tuple[str, str]]
    #: The customer's ACL groups ("public" is always added).
    groups: tuple[str, ...]
    #: The session's prefetch cache and topic memory.
    cache: PrefetchCache
    #: Escalation flags already read from the message (by the acknowledgment agent).
    flags: tuple[EscalationFlag, ...] = ()
    #: Called (on the event loop) when the turn needs a knowledge-base search, i.e. it is
    #: no prefetch hit and no small talk: the router sends the acknowledgment then.
    on_search: Callable[[], None] | None = None
