"""The turn router: both agents at once, merged into one ordered stream.

A turn is a race. The acknowledgment agent answers in milliseconds; the retrieval agent
streams a grounded answer. Small talk gets no acknowledgment (the
retrieval agent answers it at once). A turn that could be a prefetch hit holds its
acknowledgment until the retrieval agent starts a knowledge-base search (at most
``ack_hold_s``), so a hit answered from memory gets none; any other turn is acknowledged
as soon as the acknowledgment is ready. Once the answer has begun, no acknowledgment is sent.
Then the answer's deltas follow in the same stream. A new message or ``cancel`` cancels
the turn: both agents stop, nothing more is sent but a ``done`` marked ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agents.ack import AckAgent
from agents.escalation import detect_flags
from agents.retrieval import AnswerDelta, AnswerFinal, RetrievalAgent, TurnContext
from agents.smalltalk import small_talk
from core.metrics import Metrics
from gateway.escalations import EscalationQueue
from gateway.protocol import ErrorCode, event
from gateway.sessions import Session

__all__ = ["TurnRouter"]

log = logging.getLogger("duet.gateway")


@dataclass
class _Turn:
    """What one turn has sent so far."""

    turn_id: str
    started: float = field(default_factory=time.perf_counter)
    parts: list[str] = field(default_factory=list)
    ack_sent: bool = False
    answer_started: bool = False
    ack_first_ms: float | None = None
    answer_first_ms: float | None = None
    finished: bool = False

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)


class TurnRouter:
    """Runs turns for sessions."""

    def __init__(self, ack: AckAgent, retrieval: RetrievalAgent, escalations: EscalationQueue,
                 metrics: Metrics, *, ack_hold_s: float = 0.1) -> None:
        self.ack = ack
        self.retrieval = retrieval
        self.escalations = escalations
        self.metrics = metrics
        self.ack_hold_s = ack_hold_s
        # The acknowledgment has its own thread: it never queues behind searches and answers
        # in the shared pool, which is what keeps it at milliseconds under load.
        self._ack_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duet-ack")

    def close(self) -> None:
        """Stop the acknowledgment thread."""
        self._ack_executor.shutdown(wait=False, cancel_futures=True)

    def start_turn(self, session: Session, text: str) -> str:
        """Start a turn as a session task; returns its id."""
        turn = _Turn(uuid.uuid4().hex[:16])
        session.start(self.run(session, text, turn), turn=turn)
        return turn.turn_id

    async def cancel(self, session: Session) -> bool:
        """Stop the session's turn in progress; every accepted turn still ends in ``done``."""
        turn: _Turn | None = session.turn
        cancelled = await session.cancel_turn()
        if cancelled and turn is not None and not turn.finished:
            await self._finish_cancelled(session, turn)  # cancelled before it even started
        return cancelled

    async def run(self, session: Session, text: str, turn: _Turn) -> None:
        """One turn, from the customer's text to ``done`` (and ``escalated``)."""
        turn_id = turn.turn_id
        searching = asyncio.Event()
        answering = asyncio.Event()
        flags = detect_flags(text)
        context = TurnContext(session_id=session.id, text=text, history=list(session.history),
                              groups=session.groups, cache=session.cache, flags=flags,
                              on_search=searching.set)
        final: AnswerFinal | None = None

        # Small talk is answered at once by the retrieval agent: no acknowledgment. With an
        # empty prefetch cache a search is certain: acknowledge as soon as the text is read.
        # Otherwise the turn may be a prefetch hit: hold the acknowledgment (a little) until
        # the retrieval agent says it must search.
        social = small_talk(text) is not None
        may_hit = len(session.cache) > 0

        async def acknowledge() -> None:
            if social:
                return
            ack = await asyncio.get_running_loop().run_in_executor(
                self._ack_executor, functools.partial(self.ack.acknowledge, text,
                                                      session_key=session.id, flags=flags))
            if may_hit:
                waits = [asyncio.ensure_future(searching.wait()),
                         asyncio.ensure_future(answering.wait())]
                try:
                    await asyncio.wait(waits, timeout=self.ack_hold_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
            if turn.answer_started:
                return
            turn.ack_sent = True
            turn.ack_first_ms = turn.elapsed_ms()
            turn.parts.append(ack.text)
            await session.emit(event("delta", turn_id=turn_id, source="ack", text=ack.text))

        async def answer() -> None:
            nonlocal final
            stream = self.retrieval.stream(context)
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if isinstance(item, AnswerFinal):
                        final = item
                        continue
                    assert isinstance(item, AnswerDelta)
                    if not item.text:
                        continue
                    piece = item.text
                    if not turn.answer_started:
                        turn.answer_started = True
                        answering.set()
                        turn.answer_first_ms = turn.elapsed_ms()
                        if turn.ack_sent:
                            piece = " " + piece.lstrip()
                    turn.parts.append(piece)
                    await session.emit(event("delta", turn_id=turn_id, source="answer", text=piece))

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(acknowledge())
                group.create_task(answer())
        except asyncio.CancelledError:
            await self._finish_cancelled(session, turn)
            raise
        except Exception as exc:  # an agent failed: say so, keep the session usable
            turn.finished = True
            log.exception("turn failed", extra={"session_id": session.id, "turn_id": turn_id})
            self.metrics.turns.labels("failed").inc()
            self.metrics.errors.labels(ErrorCode.turn_failed).inc()
            await session.emit(event("error", turn_id=turn_id, code=ErrorCode.turn_failed,
                                     message=f"the answer could not be built: {type(exc).__name__}"))
            return
        assert final is not None, "the retrieval agent ended without a final answer"
        await self._finish(session, turn, text, final)

    async def _finish(self, session: Session, turn: _Turn, text: str, final: AnswerFinal) -> None:
        turn.finished = True
        total_ms = turn.elapsed_ms()
        reply = "".join(turn.parts)
        session.history.append(("user", text))
        session.history.append(("assistant", final.text))
        del session.history[:-40]
        timings = {"ack_first": turn.ack_first_ms, "answer_first": turn.answer_first_ms,
                   "total": total_ms}
        for phase, value in timings.items():
            if value is not None:
                self.metrics.turn_latency.labels(phase).observe(value / 1000)
        self.metrics.turns.labels(final.decision).inc()
        await session.emit(event(
            "done", turn_id=turn.turn_id, text=reply,
            citations=[_citation(c) for c in final.citations],
            as_of=_iso(final.as_of), confidence=round(final.confidence, 4), timings_ms=timings,
            decision=final.decision, prefetch_hit=final.prefetch_hit,
            rewritten_query=final.rewritten_query,
        ))
        if final.escalate_reason and not session.escalated:
            await self.escalate(session, final.escalate_reason, turn_id=turn.turn_id)
        context = TurnContext(session_id=session.id, text=text, history=list(session.history),
                              groups=session.groups, cache=session.cache)
        session.start(self.retrieval.prefetch(context, final))

    async def _finish_cancelled(self, session: Session, turn: _Turn) -> None:
        if turn.finished:
            return
        turn.finished = True
        self.metrics.turns.labels("cancelled").inc()
        with contextlib.suppress(Exception):
            await session.emit(event(
                "done", turn_id=turn.turn_id, text="".join(turn.parts), citations=[],
                as_of=None, confidence=0.0, cancelled=True,
                timings_ms={"ack_first": turn.ack_first_ms, "answer_first": turn.answer_first_ms,
                            "total": turn.elapsed_ms()},
            ))

    async def escalate(self, session: Session, reason: str, *, turn_id: str | None = None) -> None:
        """Put the conversation in the human queue and tell the customer."""
        session.escalated = True
        position = self.escalations.enqueue(session.id, reason)
        self.metrics.escalations.labels(reason).inc()
        fields: dict[str, Any] = {"reason": reason, "queue_position": position}
        if turn_id:
            fields["turn_id"] = turn_id
        await session.emit(event("escalated", **fields))


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _citation(c: Any) -> dict[str, Any]:
    return {"doc_id": c.doc_id, "title": c.title, "url": c.url, "version": c.version,
            "updated_at": _iso(c.updated_at)}
