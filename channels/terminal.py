"""``duet chat``: a terminal client of the chat websocket (shared/PROTOCOL.md §1).

Each line typed is sent as a ``message``; the reply streams as it arrives (acknowledgment
and answer in one stream), then a dim line names the sources, the index's as-of time and
the timings. ``escalated``, ``error`` and supervisor events get lines of their own.

Keys: Ctrl-C while a reply streams sends ``cancel`` (barge-in); Ctrl-C at the prompt or
Ctrl-D quits. A dropped connection is re-opened with ``hello{session_id, resume_from}``,
so the server replays what was missed and the conversation goes on; a message whose
delivery is uncertain is re-sent with the same client ``id`` (the server drops repeats).
``--once TEXT`` sends one message, prints the reply and exits: 0 when answered, 1 on an
error or a lost connection, 2 on a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import uuid
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

__all__ = ["TerminalChat", "chat_url", "run"]

#: How long ``--once`` waits after ``done`` for an ``escalated`` event of the same turn.
_ESCALATION_GRACE_S = 0.25


def chat_url(url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080) -> str:
    """The websocket URL of the chat endpoint: ``url`` normalised, else from host and port.

    ``http(s)://`` becomes ``ws(s)://`` and a URL without a path gets ``/v1/chat``.
    """
    if not url:
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"ws://{host}:{port}/v1/chat"
    if "://" not in url:
        url = f"ws://{url}"
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/v1/chat"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class _Style:
    """ANSI styling when writing to a terminal (and ``NO_COLOR`` is unset)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def warn(self, text: str) -> str:
        return self._wrap("33;1", text)

    def bad(self, text: str) -> str:
        return self._wrap("31;1", text)

    def note(self, text: str) -> str:
        return self._wrap("36", text)


class ChatEnded(Exception):
    """The connection is gone and could not be re-opened."""


class TerminalChat:
    """One chat session printed to a terminal, surviving reconnects."""

    def __init__(self, url: str, *, out: TextIO | None = None, err: TextIO | None = None,
                 color: bool | None = None, retries: int = 8, first_retries: int = 2,
                 channel: str = "terminal", customer_token: str | None = None) -> None:
        self.url = url
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        if color is None:
            color = self.out.isatty() and not os.environ.get("NO_COLOR")
        self.style = _Style(color)
        #: Connection attempts before giving up: once a session exists, and before.
        self.retries = retries
        self.first_retries = first_retries
        self.channel = channel
        #: The session, once the server named it, and the last event seen (for resume).
        self.session_id: str | None = None
        self.last_seq = 0
        #: The secret that resumes an anonymous session (from its first ``session`` event).
        self.resume_token: str | None = None
        #: The company-signed customer token, if any (``--token``).
        self.customer_token = customer_token
        #: The ``done`` of the last finished turn, and whether the last turn failed.
        self.last_done: dict[str, Any] | None = None
        self.last_error: dict[str, Any] | None = None
        self.escalations: list[dict[str, Any]] = []
        #: Set once the conversation was escalated.
        self.escalated = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._replying = asyncio.Event()  # set while a turn is awaited or streams
        self._turn_over = asyncio.Event()
        self._turn_over.set()
        self._in_line = False  # the cursor is after streamed text (a newline is owed)
        self._pending: dict[str, Any] | None = None  # the message awaiting its turn
        self._closing = False
        self._failure: ChatEnded | None = None

    # ------------------------------------------------------------------ connection

    async def connection_loop(self) -> None:
        """Keep a connection open (re-opening it with resume) until :meth:`close`."""
        failures = 0
        while not self._closing:
            try:
                ws = await self._open()
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                failures += 1
                allowed = self.retries if self.session_id is not None else self.first_retries
                if isinstance(exc, InvalidURI) or failures > allowed:
                    self._failure = ChatEnded(f"cannot connect to {self.url}: {exc}")
                    self._connected.set()  # wake whoever waits for a connection
                    self._turn_over.set()
                    return
                self._notice(f"cannot connect ({exc}); retrying")
                await asyncio.sleep(min(0.25 * 2 ** failures, 5.0))
                continue
            failures = 0
            self._ws = ws
            self._connected.set()
            try:
                first = json.loads(await ws.recv())
                if first.get("type") == "error" and self.session_id is not None:
                    # the session could not be resumed (expired): continue in a new one
                    self._notice("the earlier session has ended; continuing in a new one")
                    self.session_id, self.resume_token, self.last_seq = None, None, 0
                    await ws.send(json.dumps(self._hello()))
                    first = json.loads(await ws.recv())
                self._handle(first)  # `session` (and the replay follows)
                if self._pending is not None:  # delivery unknown: the same id again
                    await ws.send(json.dumps(self._pending))
                async for raw in ws:
                    self._handle(json.loads(raw))
            except ConnectionClosed:
                pass
            finally:
                self._connected.clear()
                self._ws = None
                with contextlib.suppress(Exception):
                    await ws.close()
            if not self._closing:
                self._notice("connection lost; reconnecting")

    async def _open(self) -> ClientConnection:
        ws = await connect(self.url, open_timeout=10, max_size=2**22)
        await ws.send(json.dumps(self._hello()))
        return ws

    def _hello(self) -> dict[str, Any]:
        hello: dict[str, Any] = {"type": "hello", "channel": self.channel}
        if self.customer_token:
            hello["customer_token"] = self.customer_token
        if self.session_id is not None:
            hello |= {"session_id": self.session_id, "resume_from": self.last_seq}
            if self.resume_token:
                hello["resume_token"] = self.resume_token
        return hello

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            await ws.close()
        self._connected.set()

    async def _send(self, message: dict[str, Any]) -> None:
        while True:
            await self._connected.wait()
            if self._failure is not None:
                raise self._failure
            if self._closing:
                return
            ws = self._ws
            if ws is None:
                await asyncio.sleep(0.05)
                continue
            try:
                await ws.send(json.dumps(message))
                return
            except ConnectionClosed:
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ turns

    async def say(self, text: str) -> None:
        """Send one message; :meth:`wait_reply` waits for its end."""
        message = {"type": "message", "text": text, "id": uuid.uuid4().hex}
        self.last_error = None
        self._turn_over.clear()
        self._replying.set()
        self._pending = message
        await self._send(message)

    async def wait_reply(self) -> None:
        """Until the turn in progress has ended (``done`` or an ``error``)."""
        await self._turn_over.wait()
        if self._failure is not None:
            raise self._failure

    async def cancel(self) -> None:
        """Barge-in: stop the reply in progress."""
        if self._replying.is_set():
            await self._send({"type": "cancel"})

    @property
    def replying(self) -> bool:
        """Whether a reply is awaited or streaming."""
        return self._replying.is_set()

    def _end_turn(self) -> None:
        self._pending = None
        self._replying.clear()
        self._turn_over.set()

    # ------------------------------------------------------------------ events

    def _handle(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        seq = item.get("seq")
        same = item.get("session_id") is not None and item.get("session_id") == self.session_id
        if kind != "session" and same and isinstance(seq, int):
            if seq <= self.last_seq:
                return  # already shown before a reconnect
            self.last_seq = seq
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(item)

    def _on_session(self, item: dict[str, Any]) -> None:
        sid = item.get("session_id")
        if self.session_id is not None and sid != self.session_id:
            # The server no longer had it: a message in flight goes to the new session.
            self._notice("the earlier session has ended; continuing in a new one")
            self.last_seq = 0
        elif self.session_id is not None and item.get("resumed"):
            self._notice("reconnected")
        self.session_id = sid
        if item.get("resume_token"):
            self.resume_token = item["resume_token"]
        if isinstance(item.get("seq"), int):
            self.last_seq = max(self.last_seq, item["seq"])

    def _on_delta(self, item: dict[str, Any]) -> None:
        if item.get("turn_id"):
            self._pending = None  # the server has the message
        if item.get("source") == "human" and not self._in_line:
            self._write(self.style.note("agent: "))
        self._write(item.get("text") or "")
        self._in_line = True

    def _on_done(self, item: dict[str, Any]) -> None:
        self._newline()
        self.last_done = item
        self._line(self.style.dim(self._summary(item)))
        self._end_turn()

    def _on_escalated(self, item: dict[str, Any]) -> None:
        self.escalations.append(item)
        self.escalated.set()
        position = item.get("queue_position")
        where = f", you are number {position} in the queue" if position is not None else ""
        self._line(self.style.warn(
            f"[escalated] waiting for a person (reason: {item.get('reason')}{where})"))

    def _on_error(self, item: dict[str, Any]) -> None:
        code = item.get("code")
        if code in ("duplicate_message", "no_turn"):
            return  # a re-sent message the server already had; a cancel after the end
        self._line(self.style.bad(f"[error {code}] {item.get('message')}"), err=True)
        if code == "resume_gap":
            return  # informational: the rest of the replay follows
        self.last_error = item
        if self._replying.is_set():
            self._end_turn()

    def _on_agent_joined(self, item: dict[str, Any]) -> None:
        agent = item.get("agent") or {}
        self._line(self.style.note(f"[{agent.get('name') or 'a support agent'} joined]"))

    def _on_agent_left(self, item: dict[str, Any]) -> None:
        agent = item.get("agent") or {}
        self._line(self.style.note(f"[{agent.get('name') or 'the support agent'} left]"))

    @staticmethod
    def _summary(done: dict[str, Any]) -> str:
        parts: list[str] = []
        if done.get("cancelled"):
            parts.append("cancelled")
        titles = list(dict.fromkeys(c.get("title") or c.get("doc_id") or "?"
                                    for c in done.get("citations") or []))
        if titles:
            parts.append("sources: " + "; ".join(titles))
        if done.get("as_of"):
            parts.append(f"as of {done['as_of']}")
        timings = done.get("timings_ms") or {}
        shown = [f"{label} {timings[key]:.0f} ms" for key, label in
                 (("ack_first", "ack"), ("answer_first", "answer"), ("total", "total"))
                 if isinstance(timings.get(key), int | float)]
        if shown:
            parts.append(", ".join(shown))
        return "  [" + " | ".join(parts) + "]"

    # ------------------------------------------------------------------ output

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _newline(self) -> None:
        if self._in_line:
            self._write("\n")
            self._in_line = False

    def _line(self, text: str, *, err: bool = False) -> None:
        self._newline()
        stream = self.err if err else self.out
        stream.write(text + "\n")
        stream.flush()

    def fail(self, text: str) -> None:
        """Print a failure of the client itself (not an ``error`` event) to stderr."""
        self._line(self.style.bad(text), err=True)

    def _notice(self, text: str) -> None:
        self._newline()
        self.err.write(self.style.dim(f"({text})") + "\n")
        self.err.flush()


# ---------------------------------------------------------------------- the command


async def once(url: str, text: str, *, timeout_s: float = 60.0,
               customer_token: str | None = None) -> int:
    """Send one message, print the reply, return the exit status."""
    chat = TerminalChat(url, customer_token=customer_token)
    status = 1
    async with asyncio.TaskGroup() as group:
        connection = group.create_task(chat.connection_loop())
        try:
            async with asyncio.timeout(timeout_s):
                await chat.say(text)
                await chat.wait_reply()
            done = chat.last_done
            if done is not None and chat.last_error is None:
                with contextlib.suppress(TimeoutError):  # an escalation follows `done`
                    async with asyncio.timeout(_ESCALATION_GRACE_S):
                        await chat.escalated.wait()
                status = 1 if done.get("cancelled") else 0
        except TimeoutError:
            chat.fail(f"[timeout] no reply within {timeout_s:g} s")
            status = 2
        except ChatEnded as exc:
            chat.fail(f"[error] {exc}")
        finally:
            await chat.close()
            connection.cancel()
    return status


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read stdin in a daemon thread (works for terminals, pipes and files alike)."""
    try:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
    finally:
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def interactive(url: str, *, customer_token: str | None = None) -> int:
    """Read lines until Ctrl-D; each line is one turn."""
    chat = TerminalChat(url, customer_token=customer_token)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, lines), daemon=True,
                     name="duet-chat-stdin").start()
    quit_now = asyncio.Event()
    prompt = sys.stdin.isatty() and chat.out.isatty()
    if prompt:
        chat._notice(f"connected to {url}; Ctrl-C stops a reply, Ctrl-D quits")

    async def on_interrupt() -> None:
        if chat.replying:
            await chat.cancel()
        else:
            quit_now.set()

    async def converse() -> int:
        while True:
            if prompt:
                chat._write(chat.style.note("you> "))
            line = await lines.get()
            if line is None:
                chat._newline()
                return 0
            if not line.strip():
                continue
            try:
                await chat.say(line)
                await chat.wait_reply()
            except ChatEnded as exc:
                chat.fail(f"[error] {exc}")
                return 1

    status = 0
    async with asyncio.TaskGroup() as group:
        connection = group.create_task(chat.connection_loop())
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, lambda: group.create_task(on_interrupt()))
        talk = group.create_task(converse())
        stop = group.create_task(quit_now.wait())
        try:
            await asyncio.wait({talk, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            if talk.done() and not talk.cancelled():
                status = talk.result()
            else:
                status = 130
                chat._newline()
                if prompt:
                    chat._write("\n")
            talk.cancel()
            stop.cancel()
            await chat.close()
            connection.cancel()
    return status


def run(url: str, *, text: str | None = None, timeout_s: float = 60.0,
        customer_token: str | None = None) -> int:
    """Entry point of ``duet chat``."""
    try:
        if text is not None:
            return asyncio.run(once(url, text, timeout_s=timeout_s,
                                    customer_token=customer_token))
        return asyncio.run(interactive(url, customer_token=customer_token))
    except KeyboardInterrupt:
        return 130
