"""The queue of conversations waiting for a human supervisor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Escalation", "EscalationQueue"]


@dataclass
class Escalation:
    """A conversation waiting for a person."""

    session_id: str
    reason: str
    #: The customer's own words when they asked for a person.
    note: str | None = None
    since: float = field(default_factory=time.time)


class EscalationQueue:
    """First come, first served; a session waits at most once at a time."""

    def __init__(self) -> None:
        self._waiting: dict[str, Escalation] = {}

    def enqueue(self, session_id: str, reason: str, *, note: str | None = None) -> int:
        """Add the session (if not already waiting); returns its 1-based position."""
        waiting = self._waiting.get(session_id)
        if waiting is None:
            self._waiting[session_id] = Escalation(session_id, reason, note)
        elif note:
            waiting.note = note
        return list(self._waiting).index(session_id) + 1

    def remove(self, session_id: str) -> Escalation | None:
        """Take the session off the queue (claimed, or gone)."""
        return self._waiting.pop(session_id, None)

    def waiting(self) -> list[Escalation]:
        """Everyone waiting, longest first."""
        return list(self._waiting.values())

    def __len__(self) -> int:
        return len(self._waiting)
