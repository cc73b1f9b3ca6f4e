"""One customer number's conversation, rendered as WhatsApp messages.

A :class:`LineRenderer` listens to its session's events (``conversation.events()``) for as
long as the customer-service window is open, so whatever is emitted into the session — the
bot's replies, a supervisor's words from any gateway process, the channel's own system
lines — goes out through the Graph API. WhatsApp does not stream: a turn's acknowledgment
is one message, sent only if the answer is not ready ``DUET_WHATSAPP_ACK_DELAY_S`` after
the customer's message; the answer is the next, split at 4,096 characters between
sentences. Every outgoing part is named after the event it renders (``session.seq.part``)
and claimed in JetStream before it is sent, so a replay after a restart, or a second process
rendering the same session, never sends it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from channels.whatsapp.graph import MAX_TEXT_CHARS, GraphClient, GraphError, WindowClosed
from channels.whatsapp.metrics import WhatsAppMetrics
from channels.whatsapp.store import WhatsAppStore
from channels.whatsapp.text import split_message
from gateway.events import (
    AgentJoined,
    AgentLeft,
    Delta,
    Done,
    ErrorEvent,
    Escalated,
    ServerEvent,
    SessionOpened,
    UserMessage,
)
from gateway.protocol import ErrorCode
from gateway.service import Conversation

__all__ = ["LineRenderer", "Outgoing", "RenderOptions"]

log = logging.getLogger("duet.channels.whatsapp")

SORRY = "Sorry — I couldn't put an answer together just now. Could you try again?"


@dataclass(frozen=True)
class RenderOptions:
    """How replies go out."""

    ack_delay_s: float = 1.0
    window_s: float = 86400.0
    template: str | None = None
    template_language: str = "en_US"


@dataclass(frozen=True)
class Outgoing:
    """One message to send."""

    #: Unique name (session, event seq, part): the never-twice key.
    name: str
    text: str
    #: The event it renders (the cursor moves past it once sent).
    seq: int
    kind: str = "reply"


@dataclass
class _Turn:
    started: float = field(default_factory=time.monotonic)
    ack: Delta | None = None
    ack_timer: asyncio.Task[None] | None = None
    ack_queued: bool = False
    answer: list[str] = field(default_factory=list)
    failed: bool = False
    #: A person's message (a ``human`` delta and its ``done``): sent with the delta.
    human: bool = False


class LineRenderer:
    """Renders one session to one WhatsApp number."""

    def __init__(self, number: str, conversation: Conversation, *, store: WhatsAppStore,
                 graph: GraphClient, metrics: WhatsAppMetrics, options: RenderOptions,
                 last_inbound: float) -> None:
        self.number = number
        self.conversation = conversation
        self.session_id = conversation.session_id
        self.store = store
        self.graph = graph
        self.metrics = metrics
        self.options = options
        #: Epoch seconds of the customer's last message (the window opens there).
        self.last_inbound = last_inbound
        #: The customer's newest message id (the typing indicator is shown on it).
        self.last_message_id: str | None = None
        self.ready = asyncio.Event()
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=256)
        self._turns: dict[str, _Turn] = {}
        self._agent: str | None = None
        self._group: asyncio.TaskGroup | None = None

    def customer_wrote(self, message_id: str, timestamp: float) -> None:
        """A message came from the customer: the window reopens."""
        self.last_inbound = max(self.last_inbound, timestamp)
        self.last_message_id = message_id

    def window_open(self, now: float | None = None) -> bool:
        """Whether free-form messages may be sent."""
        return (now or time.time()) - self.last_inbound < self.options.window_s

    async def run(self, resume_from: int | None) -> None:
        """Render until cancelled."""
        async with self.conversation.events(resume_from=resume_from) as events, \
                asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._send_loop())
            self.ready.set()
            async for event in events:
                await self._on_event(event)

    # --- events → messages ---------------------------------------------------------------

    async def _on_event(self, event: ServerEvent) -> None:
        if isinstance(event, SessionOpened):
            return
        if isinstance(event, UserMessage):
            if event.turn_id is not None:
                self._turns[event.turn_id] = _Turn()
        elif isinstance(event, Delta):
            await self._on_delta(event)
        elif isinstance(event, Done):
            await self._on_done(event)
        elif isinstance(event, Escalated):
            await self._queue(event, event.message or (
                "I've asked a person from our team to take over — you're number "
                f"{event.queue_position} in the queue. They'll answer right here."),
                kind="system")
        elif isinstance(event, AgentJoined):
            self._agent = event.agent.name
            await self._queue(event, f"{event.agent.name} from our support team has joined "
                              "the conversation.", kind="system")
        elif isinstance(event, AgentLeft):
            self._agent = None
            await self._queue(event, f"{event.agent.name} has handed the conversation back "
                              "to our assistant.", kind="system")
        elif (isinstance(event, ErrorEvent) and event.turn_id is not None
              and event.code == ErrorCode.turn_failed):
            self._turns.setdefault(event.turn_id, _Turn()).failed = True

    def _turn(self, turn_id: str | None) -> _Turn:
        return self._turns.setdefault(turn_id or "", _Turn())

    async def _on_delta(self, delta: Delta) -> None:
        if delta.source == "human":
            if delta.turn_id is not None:
                self._turn(delta.turn_id).human = True
            text = f"*{self._agent}*: {delta.text}" if self._agent else delta.text
            await self._queue(delta, text, kind="human")
        elif delta.source == "system" and delta.turn_id is None:
            await self._queue(delta, delta.text, kind="system")
        elif delta.source == "ack":
            turn = self._turn(delta.turn_id)
            turn.ack = delta
            wait_s = turn.started + self.options.ack_delay_s - time.monotonic()
            assert self._group is not None
            turn.ack_timer = self._group.create_task(self._ack_later(turn, delta, wait_s))
        else:  # the answer, or the gateway's own words as a turn's reply: sent at its done
            self._turn(delta.turn_id).answer.append(delta.text)

    async def _ack_later(self, turn: _Turn, delta: Delta, wait_s: float) -> None:
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        turn.ack_queued = True
        await self._queue(delta, delta.text, kind="ack")

    async def _on_done(self, done: Done) -> None:
        turn = self._turns.pop(done.turn_id or "", None)
        if turn is None:
            return  # nothing of this turn was seen here: rendered before a restart
        if turn.ack_timer is not None and not turn.ack_queued:
            turn.ack_timer.cancel()  # the answer came first: no acknowledgment
        if done.cancelled or turn.human:
            # superseded by a newer message (or run again after a restart); or a person's
            # message, already sent with its delta
            return
        answer = "".join(turn.answer).strip()
        if not answer:
            answer = done.text
            if turn.ack is not None and answer.startswith(turn.ack.text):
                answer = answer[len(turn.ack.text):]
            answer = answer.strip()
        if not answer and turn.failed:
            answer = SORRY
        for i, part in enumerate(split_message(answer, MAX_TEXT_CHARS)):
            await self._queue(done, part, part=i, kind="answer")

    async def _queue(self, event: ServerEvent, text: str, *, part: int = 0,
                     kind: str = "reply") -> None:
        if not text.strip():
            return
        for i, piece in enumerate(split_message(text, MAX_TEXT_CHARS)):
            await self._outbox.put(Outgoing(
                name=f"{self.session_id}.{event.seq}.{part + i}", text=piece, seq=event.seq,
                kind=kind))

    # --- sending -------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            out = await self._outbox.get()
            try:
                await self._deliver(out)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("WhatsApp message not sent",
                              extra={"session_id": self.session_id, "outgoing": out.name})
                self.metrics.outbound.labels(out.kind, "failed").inc()
            with contextlib.suppress(Exception):
                await self.store.save_cursor(self.session_id, out.seq)

    async def _deliver(self, out: Outgoing) -> None:
        if not self.window_open():
            await self._window_closed(out)
            return
        if not await self.store.claim_send(out.name):
            self.metrics.outbound.labels(out.kind, "duplicate").inc()
            return
        try:
            await self.graph.send_text(self.number, out.text)
        except WindowClosed:
            await self._window_closed(out)
            return
        except GraphError as exc:
            log.error("WhatsApp message not sent: %s", exc.message,
                      extra={"session_id": self.session_id, "outgoing": out.name,
                             "status": exc.status, "code": exc.code})
            self.metrics.outbound.labels(out.kind, "failed").inc()
            return
        self.metrics.outbound.labels(out.kind, "sent").inc()
        if out.kind == "ack" and self.last_message_id:
            with contextlib.suppress(GraphError):  # the answer is still being written
                await self.graph.mark_read(self.last_message_id, typing=True)

    async def _window_closed(self, out: Outgoing) -> None:
        """Outside the window only the configured template may go (once per window)."""
        self.metrics.outbound.labels(out.kind, "window_closed").inc()
        log.warning("WhatsApp reply outside the customer-service window not sent",
                    extra={"session_id": self.session_id, "outgoing": out.name})
        options = self.options
        if options.template is None:
            return
        if not await self.store.claim_send(f"{self.session_id}.template.{self.last_inbound}"):
            return
        try:
            await self.graph.send_template(self.number, options.template,
                                           options.template_language)
            self.metrics.outbound.labels("template", "sent").inc()
        except GraphError as exc:
            log.error("WhatsApp template not sent: %s", exc.message,
                      extra={"session_id": self.session_id})
            self.metrics.outbound.labels("template", "failed").inc()
