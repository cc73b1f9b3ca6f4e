"""The turn router: both agents at once, merged into one ordered stream of typed events.

A turn is a race. The acknowledgment agent answers in milliseconds; the retrieval agent
streams a grounded answer. Small talk gets no acknowledgment (the retrieval agent answers
it at once). A turn that could be a prefetch hit holds its acknowledgment until the
retrieval agent starts a knowledge-base search (at most ``ack_hold_s``), so a hit answered
from memory gets none; any other turn is acknowledged as soon as the acknowledgment is
ready. Once the answer has begun, no acknowledgment is sent. The acknowledgment is
best-effort: if it fails, the answer still comes. A new message or ``cancel`` cancels the
turn: both agents stop, nothing more is sent but a ``done`` marked ``cancelled``.

Who answers depends on the conversation's state (:mod:`gateway.escalations`): with the bot,
a turn runs as above (a human-only topic gets an honest word and goes to a person instead);
while waiting for a person, the bot answers no facts: it keeps the message for the
supervisor and says where the customer stands (or hands back to the bot when asked); while
a person holds it, the message is logged (the supervisor's socket shows it) and the bot's
turn ends at once in a ``done`` marked ``cancelled``.
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
from agents.escalation import (
    EscalationFlag,
    EscalationPolicy,
    HumanOnlyTopics,
    detect_flags,
    wants_the_bot,
)
from agents.retrieval import AnswerDelta, AnswerFinal, RetrievalAgent, TurnContext
from agents.smalltalk import small_talk
from core.metrics import Metrics
from gateway import handoff
from gateway.audit import AuditLog
from gateway.escalations import ConversationState, EscalationQueue
from gateway.events import CitationOut, Delta, Done, ErrorEvent, Escalated, Timings, UserMessage
from gateway.protocol import ErrorCode
from gateway.sessions import Interrupted, Session

__all__ = ["Turn", "TurnRouter"]

log = logging.getLogger("duet.gateway")


@dataclass
class Turn:
    """What one turn has sent so far."""

    turn_id: str
    text: str
    clock: Any = time.perf_counter
    started: float = -1.0
    parts: list[str] = field(default_factory=list)
    ack_sent: bool = False
    answer_started: bool = False
    ack_first_ms: float | None = None
    answer_first_ms: float | None = None
    finished: bool = False

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    def elapsed_ms(self) -> float:
        """Milliseconds since the turn started."""
        return round((self.clock() - self.started) * 1000, 2)

    def timings(self) -> Timings:
        """The turn's latencies so far."""
        return Timings(ack_first=self.ack_first_ms, answer_first=self.answer_first_ms,
                       total=self.elapsed_ms())


class TurnRouter:
    """Runs turns for sessions."""

    def __init__(self, ack: AckAgent, retrieval: RetrievalAgent, escalations: EscalationQueue,
                 metrics: Metrics, *, ack_hold_s: float = 0.1,
                 clock: Any = time.perf_counter, policy: EscalationPolicy | None = None,
                 human_only: HumanOnlyTopics | None = None,
                 audit: AuditLog | None = None) -> None:
        self.ack = ack
        self.retrieval = retrieval
        self.escalations = escalations
        self.metrics = metrics
        self.policy = policy or EscalationPolicy()
        self.human_only = human_only
        self.audit = audit or AuditLog()
        self.ack_hold_s = ack_hold_s
        self.clock = clock
        # The acknowledgment has its own thread: it never queues behind searches and answers
        # in the shared pool, which is what keeps it at milliseconds under load.
        self._ack_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duet-ack")

    def close(self) -> None:
        """Stop the acknowledgment thread."""
        self._ack_executor.shutdown(wait=False, cancel_futures=True)

    async def start_turn(self, session: Session, text: str, *,
                         message_id: str | None = None) -> str:
        """Log the customer's message and start its turn as a session task; returns its id."""
        turn = Turn(uuid.uuid4().hex[:16], text, clock=self.clock)
        if session.record_stale:
            await session.reload_record()  # a person's words, saved by another process
        state = self.escalations.state(session.id)
        await session.emit(UserMessage(turn_id=turn.turn_id, text=text, id=message_id))
        if state is ConversationState.human:
            # the person holding the conversation answers: the bot's turn is called off
            turn.finished = True
            self.metrics.turns.labels("human").inc()
            await session.emit(Done(turn_id=turn.turn_id, text="", cancelled=True,
                                    timings_ms=turn.timings()))
            session.start(self.escalations.note_message(session.id, text))
        elif state is ConversationState.waiting:
            session.start(self._waiting(session, turn), turn=turn)
        elif self.human_only is not None and (topic := self.human_only.match(text)):
            session.start(self._human_only(session, turn, topic), turn=turn)
        else:
            session.start(_TurnRun(self, session, turn).run(), turn=turn)
        return turn.turn_id

    async def say(self, session: Session, turn: Turn, text: str) -> None:
        """A turn the bot answers with its own words, no facts (waiting, a human-only topic,
        back to the bot): one ``answer`` delta and its ``done`` (no citations, no decision)."""
        turn.parts.append(text)
        await session.emit(Delta(turn_id=turn.turn_id, source="answer", text=text))
        turn.finished = True
        await session.emit(Done(turn_id=turn.turn_id, text=text, timings_ms=turn.timings()))

    async def _waiting(self, session: Session, turn: Turn) -> None:
        """A message while waiting: no facts from the bot; kept for the supervisor."""
        self.metrics.turns.labels("waiting").inc()
        if wants_the_bot(turn.text) and await self.escalations.back_to_bot(session.id):
            session.escalated = False
            await self.audit.record("customer", "back_to_bot", session.id)
            await self.say(session, turn, handoff.BACK_TO_BOT)
            await session.save()
            return
        record = await self.escalations.leave_message(session.id, turn.text)
        if record is None or record.state is not ConversationState.waiting:
            turn.finished = True  # claimed meanwhile: the person answers
            await session.emit(Done(turn_id=turn.turn_id, text="", cancelled=True,
                                    timings_ms=turn.timings()))
            return
        online = await self.escalations.online()
        await self.say(session, turn, handoff.still_waiting(
            self.escalations.position(session.id), record.notice, len(online)))

    async def _human_only(self, session: Session, turn: Turn, topic: str) -> None:
        """A topic the bot does not answer: an honest word, then the queue."""
        self.metrics.turns.labels("human_only").inc()
        await self.say(session, turn, handoff.human_only(topic))
        await self.escalate(session, topic, turn_id=turn.turn_id)

    async def cancel(self, session: Session) -> bool:
        """Stop the session's turn in progress; every accepted turn still ends in ``done``."""
        turn: Turn | None = session.turn
        cancelled = await session.cancel_turn()
        if cancelled and turn is not None and not turn.finished:
            await self.finish_cancelled(session, turn)  # cancelled before it even started
        return cancelled

    async def recover(self, session: Session, pending: Interrupted) -> str:
        """Close a turn its gateway process never finished, then run it again."""
        self.metrics.turns.labels("interrupted").inc()
        await session.emit(Done(turn_id=pending.turn_id, text=pending.reply, cancelled=True,
                                interrupted=True, timings_ms=Timings(total=0.0)))
        return await self.start_turn(session, pending.text)

    async def finish_cancelled(self, session: Session, turn: Turn) -> None:
        """End a stopped turn with a ``done`` marked ``cancelled`` (once). Not when the
        process is shutting down: the turn stays open in the journal and is run again."""
        if turn.finished or session.shutting_down:
            return
        turn.finished = True
        self.metrics.turns.labels("cancelled").inc()
        with contextlib.suppress(Exception):
            await session.emit(Done(turn_id=turn.turn_id, text="".join(turn.parts),
                                    cancelled=True, timings_ms=turn.timings()))

    async def escalate(self, session: Session, reason: str, *, turn_id: str | None = None,
                       note: str | None = None) -> None:
        """Put the conversation in the human queue and tell the customer what happens next
        (``note``: the customer's own words, for the supervisor; never part of the history).
        A conversation a person already holds stays with them."""
        before = self.escalations.state(session.id)
        if before is ConversationState.human:
            return
        online = await self.escalations.online()
        last = next((e.text for e in reversed(session.log) if isinstance(e, UserMessage)), None)
        record = await self.escalations.enqueue(
            session.id, reason, note=note, channel=session.channel,
            customer_id=session.customer_id, last_message=last, offline=not online,
            actor="customer" if reason == "customer_request" else "bot")
        if record.state is ConversationState.human:
            return
        session.escalated = True
        session.record.low_confidence_turns = 0
        if before is not ConversationState.waiting:
            self.metrics.escalations.labels(reason).inc()
            await self.audit.record("customer" if reason == "customer_request" else "bot",
                                    "escalate", session.id, reason=reason)
        position = self.escalations.position(session.id) or 1
        await session.emit(Escalated(
            turn_id=turn_id, reason=record.reason or reason, queue_position=position,
            message=handoff.escalated(position, len(online)), supervisors_online=len(online)))
        await session.save()

    async def acknowledgment(self, text: str, *, session_key: str,
                             flags: tuple[EscalationFlag, ...]) -> str:
        """The acknowledgment agent's words, computed on its own thread."""
        ack = await asyncio.get_running_loop().run_in_executor(
            self._ack_executor, functools.partial(self.ack.acknowledge, text,
                                                  session_key=session_key, flags=flags))
        return ack.text


class _TurnRun:
    """One turn, from the customer's text to ``done`` (and ``escalated``)."""

    def __init__(self, router: TurnRouter, session: Session, turn: Turn) -> None:
        self.router = router
        self.session = session
        self.turn = turn
        self.searching = asyncio.Event()
        self.answering = asyncio.Event()
        self.flags = detect_flags(turn.text)
        self.final: AnswerFinal | None = None

    async def run(self) -> None:
        router, session, turn = self.router, self.session, self.turn
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._acknowledge())
                group.create_task(self._answer())
        except asyncio.CancelledError:
            await router.finish_cancelled(session, turn)
            raise
        except Exception as exc:  # the answer failed: say so, keep the session usable
            turn.finished = True
            cause = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
            log.error("turn failed", exc_info=cause,
                      extra={"session_id": session.id, "turn_id": turn.turn_id})
            router.metrics.turns.labels("failed").inc()
            router.metrics.errors.labels(ErrorCode.turn_failed).inc()
            await session.emit(ErrorEvent(
                turn_id=turn.turn_id, code=ErrorCode.turn_failed,
                message="the answer could not be built; please try again"))
            await session.emit(Done(turn_id=turn.turn_id, text="".join(turn.parts),
                                    timings_ms=turn.timings(), decision="fallback"))
            await router.escalate(session, "answer_failed", turn_id=turn.turn_id)
            return
        assert self.final is not None, "the retrieval agent ended without a final answer"
        await self._finish(self.final)

    async def _acknowledge(self) -> None:
        """Send the acknowledgment unless the answer is first; never fails the turn."""
        session, turn = self.session, self.turn
        # Small talk is answered at once by the retrieval agent: no acknowledgment. With an
        # empty prefetch cache a search is certain: acknowledge as soon as the text is read.
        # Otherwise the turn may be a prefetch hit: hold the acknowledgment (a little) until
        # the retrieval agent says it must search.
        if small_talk(turn.text) is not None:
            return
        may_hit = len(session.cache) > 0
        try:
            text = await self.router.acknowledgment(turn.text, session_key=session.id,
                                                    flags=self.flags)
        except Exception:
            log.exception("acknowledgment failed; the answer goes on",
                          extra={"session_id": session.id, "turn_id": turn.turn_id})
            self.router.metrics.errors.labels("ack_failed").inc()
            return
        if may_hit:
            await self._hold()
        if turn.answer_started or not text:
            return
        turn.ack_sent = True
        turn.ack_first_ms = turn.elapsed_ms()
        turn.parts.append(text)
        await session.emit(Delta(turn_id=turn.turn_id, source="ack", text=text))

    async def _hold(self) -> None:
        """Wait until the retrieval agent searches or answers, at most ``ack_hold_s``."""
        waits = [asyncio.ensure_future(self.searching.wait()),
                 asyncio.ensure_future(self.answering.wait())]
        try:
            await asyncio.wait(waits, timeout=self.router.ack_hold_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _answer(self) -> None:
        session, turn = self.session, self.turn
        context = TurnContext(session_id=session.id, text=turn.text,
                              history=list(session.history), groups=session.groups,
                              cache=session.cache, flags=self.flags,
                              on_search=self.searching.set)
        stream = self.router.retrieval.stream(context)
        async with contextlib.aclosing(stream):
            async for item in stream:
                if isinstance(item, AnswerFinal):
                    self.final = item
                elif isinstance(item, AnswerDelta) and item.text:
                    await self._emit_answer(item.text)

    async def _emit_answer(self, piece: str) -> None:
        turn = self.turn
        if not turn.answer_started:
            turn.answer_started = True
            self.answering.set()
            turn.answer_first_ms = turn.elapsed_ms()
            if turn.ack_sent:
                piece = " " + piece.lstrip()
        turn.parts.append(piece)
        await self.session.emit(Delta(turn_id=turn.turn_id, source="answer", text=piece))

    async def _finish(self, final: AnswerFinal) -> None:
        router, session, turn = self.router, self.session, self.turn
        turn.finished = True
        timings = turn.timings()
        session.remember(turn.text, final.text)
        for phase, value in timings.model_dump().items():
            if value is not None:
                router.metrics.turn_latency.labels(phase).observe(value / 1000)
        router.metrics.turns.labels(final.decision).inc()
        await session.emit(Done(
            turn_id=turn.turn_id, text="".join(turn.parts),
            citations=[CitationOut(doc_id=c.doc_id, title=c.title, url=c.url,
                                   version=c.version, updated_at=c.updated_at)
                       for c in final.citations],
            as_of=final.as_of, confidence=round(min(1.0, max(0.0, final.confidence)), 4),
            timings_ms=timings, decision=final.decision, prefetch_hit=final.prefetch_hit,
            rewritten_query=final.rewritten_query,
        ))
        reason, session.record.low_confidence_turns = router.policy.confirm(
            final.escalate_reason, session.record.low_confidence_turns)
        if reason and router.escalations.state(session.id) in (ConversationState.bot,
                                                               ConversationState.closed):
            await router.escalate(session, reason, turn_id=turn.turn_id)
        else:
            await session.save()
        context = TurnContext(session_id=session.id, text=turn.text,
                              history=list(session.history), groups=session.groups,
                              cache=session.cache)
        session.start(router.retrieval.prefetch(context, final))
