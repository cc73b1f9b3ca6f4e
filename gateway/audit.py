"""The audit log: who did what to which conversation, and when.

Every supervisor action (claim, message, release, close, refused attempts) and every state
change of a conversation is one entry on the JetStream stream ``DUET_AUDIT`` (subject
``duet.audit.<session_id>``, file storage, kept ``DUET_AUDIT_MAX_AGE_S``). Without JetStream
(unit tests) entries stay in memory. Entries never carry message text: the transcript is
the session's own log.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)
from pydantic import BaseModel, Field

from core.streams import ensure_stream

__all__ = ["AuditEntry", "AuditLog"]

log = logging.getLogger("duet.gateway")

STREAM = "DUET_AUDIT"


class AuditEntry(BaseModel):
    """One recorded action."""

    at: datetime = Field(default_factory=lambda: datetime.now(UTC), description="When (UTC).")
    actor: str = Field(description="The supervisor's name, or bot, customer, system.")
    action: str = Field(description="claim, message, release, close, escalate, refused, …")
    session_id: str = Field(description="The conversation.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Reason, code, sizes.")


class AuditLog:
    """Append-only; in JetStream when given a context, else in memory."""

    def __init__(self, js: JetStreamContext | None = None) -> None:
        self._js = js
        self._memory: list[AuditEntry] = []

    @classmethod
    async def open(cls, js: JetStreamContext, *, max_age_s: float = 90 * 86400.0,
                   max_bytes: int = 1024**3) -> AuditLog:
        """The log over the ``DUET_AUDIT`` stream (created if missing; oldest entries go first)."""
        await ensure_stream(js, StreamConfig(
            name=STREAM, subjects=["duet.audit.*"], storage=StorageType.FILE,
            max_age=max_age_s, max_bytes=max_bytes, discard=DiscardPolicy.OLD))
        return cls(js)

    async def record(self, actor: str, action: str, session_id: str, **detail: Any) -> None:
        """Append an entry; an outage is logged (the action itself already happened)."""
        entry = AuditEntry(actor=actor, action=action, session_id=session_id, detail=detail)
        log.info("audit", extra={"actor": actor, "action": action, "session_id": session_id})
        if self._js is None:
            self._memory.append(entry)
            return
        try:
            await self._js.publish(f"duet.audit.{session_id}",
                                   entry.model_dump_json().encode(), stream=STREAM)
        except Exception:
            log.exception("audit entry not written",
                          extra={"actor": actor, "action": action, "session_id": session_id})

    async def read(self, session_id: str | None = None, *, limit: int = 1000
                   ) -> list[AuditEntry]:
        """Entries, oldest first (one conversation's, or all), at most ``limit``."""
        if self._js is None:
            rows = [e for e in self._memory if session_id in (None, e.session_id)]
            return rows[-limit:]
        subject = f"duet.audit.{session_id}" if session_id else "duet.audit.*"
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                inactive_threshold=30.0, mem_storage=True)
        sub = await self._js.pull_subscribe(subject, stream=STREAM, config=config)
        out: list[AuditEntry] = []
        try:
            while len(out) < limit:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:
                    break
                for msg in msgs:
                    with contextlib.suppress(ValueError):
                        out.append(AuditEntry.model_validate(json.loads(msg.data)))
                if not msgs or msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out[:limit]
