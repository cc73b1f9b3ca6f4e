"""The WhatsApp channel at work: the inbox consumer and the open conversations.

The webhook only verifies and persists a delivery (:mod:`channels.whatsapp.webhook`); this
consumer does the rest, with explicit acks: a delivery that fails part-way is redelivered
(its messages already claimed by *this* delivery are processed again; the session's own
message-id check keeps a turn from starting twice), a malformed one is terminated.

Per customer message: claim its id (Meta's retries are dropped), find or open the number's
session (one per number, ``whatsapp:+<number>`` with the groups configured for it), make
sure its :class:`~channels.whatsapp.line.LineRenderer` listens, mark the message read with
the typing indicator, and submit the text (or, for a voice note or a kind the channel
cannot read, log it and answer politely). Messages of one number are handled in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from channels.whatsapp.graph import GraphClient, GraphError
from channels.whatsapp.line import LineRenderer, RenderOptions
from channels.whatsapp.metrics import WhatsAppMetrics
from channels.whatsapp.payload import Inbound, parse_delivery
from channels.whatsapp.store import CONSUMER, INBOX_STREAM, Line, WhatsAppStore
from channels.whatsapp.text import POLITE
from channels.whatsapp.voice import VoiceNotes
from gateway.auth import PUBLIC_GROUP, Identity
from gateway.events import Delta, UserMessage
from gateway.protocol import MAX_TEXT_CHARS, ErrorCode, ProtocolError
from gateway.service import ChatService, Conversation
from gateway.store import HEARTBEAT_TTL_S

__all__ = ["WhatsAppService", "parse_groups"]

log = logging.getLogger("duet.channels.whatsapp")


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def parse_groups(setting: str | None) -> dict[str, tuple[str, ...]]:
    """``+15551234567=staff|beta,+1555...=vip`` → number digits → groups."""
    out: dict[str, tuple[str, ...]] = {}
    for item in (setting or "").split(","):
        number, sep, groups = item.partition("=")
        if not sep or not _digits(number):
            if item.strip():
                raise ValueError(f"DUET_WHATSAPP_GROUPS: {item.strip()!r} is not number=groups")
            continue
        out[_digits(number)] = tuple(g.strip() for g in groups.split("|") if g.strip())
    return out


@dataclass
class _Running:
    renderer: LineRenderer
    task: asyncio.Task[None]


class WhatsAppService:
    """Processes the inbox and keeps a renderer per number whose window is open."""

    def __init__(self, chat: ChatService, store: WhatsAppStore, graph: GraphClient, *,
                 metrics: WhatsAppMetrics, options: RenderOptions,
                 groups: dict[str, tuple[str, ...]], phone_number_id: str,
                 voice: VoiceNotes | None = None, concurrency: int = 64) -> None:
        self.chat = chat
        self.store = store
        self.graph = graph
        self.metrics = metrics
        self.options = options
        self.groups = groups
        self.phone_number_id = phone_number_id
        #: Speech to text for voice notes (None: they get the polite answer).
        self.voice = voice
        #: Seconds after start-up before open conversations are picked up again.
        self.recover_after_s = HEARTBEAT_TTL_S
        self._lines: dict[str, _Running] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._group: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        """Consume the inbox until cancelled (picking up open conversations first)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._recover())
            group.create_task(self._reap())
            await self._consume(self.store.js)

    # --- the inbox -----------------------------------------------------------------------

    async def _consume(self, js: JetStreamContext) -> None:
        sub = await js.pull_subscribe_bind(durable=CONSUMER, stream=INBOX_STREAM)
        assert self._group is not None
        failing = False
        while True:
            try:
                msgs = await sub.fetch(64, timeout=1.0)
            except (TimeoutError, FetchTimeoutError):
                continue
            except Exception as exc:  # NATS down: once per outage, not every second
                if not failing:
                    log.warning("whatsapp inbox fetch failed; retrying until it works",
                                extra={"reason": f"{type(exc).__name__}: {exc}"[:200]})
                failing = True
                await asyncio.sleep(1.0)
                continue
            if failing:
                failing = False
                log.info("whatsapp inbox fetching again")
            for msg in msgs:
                await self._slots.acquire()
                self._group.create_task(self._handle(msg))

    async def _handle(self, msg: Msg) -> None:
        try:
            try:
                delivery = parse_delivery(msg.data)
            except ValueError:
                log.error("malformed WhatsApp delivery dropped",
                          extra={"inbox_seq": msg.metadata.sequence.stream})
                await msg.term()
                return
            received = (msg.headers or {}).get("Duet-Received")
            if received:
                self.metrics.inbox_latency.observe(max(0.0, time.time() - float(received)))
            for status in delivery.statuses:
                self.metrics.statuses.labels(status.status).inc()
                if status.error_codes:
                    log.warning("WhatsApp message not delivered",
                                extra={"wamid": status.id, "codes": list(status.error_codes)})
            seq = msg.metadata.sequence.stream
            for inbound in sorted(delivery.messages, key=lambda m: m.timestamp):
                await self._inbound(inbound, seq)
            await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = 2.0
            if isinstance(exc, ProtocolError) and exc.code == ErrorCode.rate_limited:
                delay = 1.0
            else:
                log.exception("WhatsApp delivery failed; it will be redelivered")
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
        finally:
            self._slots.release()

    async def _inbound(self, inbound: Inbound, delivery: int) -> None:
        number = _digits(inbound.sender)
        if not number:
            return
        if inbound.phone_number_id not in (None, self.phone_number_id):
            # another business number of the same Meta app: not ours to answer
            self.metrics.inbound.labels(inbound.kind, "other_number").inc()
            return
        if not await self.store.claim_message(inbound.id, delivery):
            self.metrics.inbound.labels(inbound.kind, "duplicate").inc()
            return
        lock = self._locks.setdefault(number, asyncio.Lock())
        async with lock:
            renderer = await self._renderer(number)
            stamp = float(inbound.timestamp) if inbound.timestamp else time.time()
            renderer.customer_wrote(inbound.id, stamp)
            await self.store.save_line(number, Line(session_id=renderer.session_id,
                                                    last_inbound=renderer.last_inbound))
            assert self._group is not None
            voice = inbound.kind == "voice" and self.voice is not None
            self._group.create_task(self._mark_read(
                inbound.id, typing=inbound.text is not None or voice))
            conversation = renderer.conversation
            text = inbound.text
            if text is None and voice and not conversation.session.knows_message(inbound.id):
                text = await self._transcribe(inbound)
                if text is None:
                    await self._polite(renderer, inbound, "voice_unclear")
                    return
            if text is None:
                await self._polite(renderer, inbound)
                return
            try:
                await conversation.submit(text[:MAX_TEXT_CHARS], message_id=inbound.id)
            except ProtocolError as exc:
                if exc.code != ErrorCode.duplicate_message:
                    raise
                self.metrics.inbound.labels(inbound.kind, "duplicate").inc()
                return
            self.metrics.inbound.labels(inbound.kind, "accepted").inc()

    async def _transcribe(self, inbound: Inbound) -> str | None:
        """The words of a voice note (None: it could not be fetched or understood)."""
        assert self.voice is not None
        if inbound.media_id is None:
            return None
        try:
            data = await self.graph.download_media(inbound.media_id)
        except GraphError as exc:
            log.warning("voice note not downloaded: %s", exc.message)
            return None
        text = await self.voice.transcribe(data)
        self.metrics.inbound.labels("voice", "transcribed" if text else "unclear").inc()
        return text

    async def _polite(self, renderer: LineRenderer, inbound: Inbound,
                      reason: str | None = None) -> None:
        """Log a message the channel cannot read, and answer it politely."""
        session = renderer.conversation.session
        if session.knows_message(inbound.id):
            return
        await session.emit(UserMessage(text=f"[{inbound.kind} message]", id=inbound.id))
        await session.emit(Delta(source="system", text=POLITE.get(
            reason or inbound.kind, POLITE["default"])))
        self.metrics.inbound.labels(inbound.kind, "polite").inc()

    async def _mark_read(self, message_id: str, *, typing: bool) -> None:
        try:
            await self.graph.mark_read(message_id, typing=typing)
        except GraphError as exc:
            log.warning("read receipt not sent: %s", exc.message)

    # --- conversations -------------------------------------------------------------------

    def identity(self, number: str) -> Identity:
        """Who a number is: ``whatsapp:+<number>``, with its configured groups."""
        return Identity.for_channel(f"whatsapp:+{number}",
                                    self.groups.get(number, (PUBLIC_GROUP,)))

    async def _renderer(self, number: str) -> LineRenderer:
        running = self._lines.get(number)
        if running is not None and not running.task.done():
            return running.renderer
        identity = self.identity(number)
        line = await self.store.line(number)
        conversation = None
        if line is not None:
            try:
                conversation = await self.chat.open(identity, channel="whatsapp",
                                                    session_id=line.session_id)
            except ProtocolError as exc:
                if exc.code != ErrorCode.unauthorized:
                    raise
                line = None  # the session expired: a new one
        if conversation is None:
            conversation = await self.chat.open(identity, channel="whatsapp")
            fresh = Line(session_id=conversation.session_id)
            if line is None:
                line = await self.store.create_line(number, fresh)
                if line.session_id != conversation.session_id:  # another process was first
                    conversation = await self.chat.open(identity, channel="whatsapp",
                                                        session_id=line.session_id)
            else:
                line = fresh  # the caller saves it, with the time of this message
        return await self._start(number, conversation.session_id, line.last_inbound,
                                 conversation=conversation)

    async def _start(self, number: str, session_id: str, last_inbound: float, *,
                     conversation: Conversation | None = None) -> LineRenderer:
        if conversation is None:
            conversation = await self.chat.open(self.identity(number), channel="whatsapp",
                                                session_id=session_id)
        renderer = LineRenderer(number, conversation, store=self.store, graph=self.graph,
                                metrics=self.metrics, options=self.options,
                                last_inbound=last_inbound)
        cursor = await self.store.cursor(session_id)
        assert self._group is not None
        task = self._group.create_task(self._render(renderer, cursor))
        self._lines[number] = _Running(renderer, task)
        ready = asyncio.ensure_future(renderer.ready.wait())
        try:
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if task.done():
            task.result()
            raise RuntimeError("the WhatsApp renderer stopped at once")
        return renderer

    async def _render(self, renderer: LineRenderer, cursor: int | None) -> None:
        try:
            await renderer.run(resume_from=cursor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("WhatsApp renderer failed", extra={"session_id": renderer.session_id})

    async def _recover(self) -> None:
        """Listen again to every conversation whose window is still open (a restart).

        It waits until a gateway process that died can no longer look alive (its heartbeat
        expired): the session service re-runs a turn that process left unfinished only then.
        Nothing emitted meanwhile is missed: a renderer starts after the newest event it
        rendered."""
        await asyncio.sleep(self.recover_after_s)
        now = time.time()
        try:
            lines = await self.store.lines()
        except Exception:
            log.exception("WhatsApp conversations not recovered")
            return
        for number, line in lines.items():
            if now - line.last_inbound >= self.options.window_s or number in self._lines:
                continue
            async with self._locks.setdefault(number, asyncio.Lock()):
                if number in self._lines:
                    continue
                try:
                    await self._start(number, line.session_id, line.last_inbound)
                except Exception:
                    log.warning("WhatsApp conversation not recovered",
                                extra={"session_id": line.session_id})

    async def _reap(self) -> None:
        """Stop listening to conversations whose window has closed."""
        while True:
            await asyncio.sleep(min(60.0, self.options.window_s / 4))
            now = time.time()
            for number, running in list(self._lines.items()):
                if running.task.done() or not running.renderer.window_open(now):
                    running.task.cancel()
                    self._lines.pop(number, None)
            for number, lock in list(self._locks.items()):
                if not lock.locked() and number not in self._lines:
                    del self._locks[number]

    @property
    def lines(self) -> dict[str, LineRenderer]:
        """The numbers listened to now, and their renderers."""
        return {n: r.renderer for n, r in self._lines.items() if not r.task.done()}

