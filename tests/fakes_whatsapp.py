"""A local WhatsApp Cloud API (Graph API) server, and Meta's webhook payloads, signed.

:class:`FakeGraph` speaks the documented request and response shapes of
``POST /{version}/{phone_number_id}/messages``: bearer-token auth (``190`` OAuthException
otherwise), text (``body`` ≤ 4,096 characters), template and read-receipt (with
``typing_indicator``) bodies, ``{"messaging_product", "contacts", "messages": [{"id"}]}``
answers, Meta's error body ``{"error": {"message", "type", "code", "fbtrace_id"}}``, and
failures on demand: ``fail(status, code)`` for the next calls, ``closed`` numbers outside
the customer-service window (``131047``), ``drop`` (the connection closes after the request
was read: the caller cannot know whether it was sent). HTTP/1.1 with keep-alive, on
``asyncio.start_server``.

The webhook helpers build deliveries as Meta documents them
(``object: whatsapp_business_account`` → ``entry[].changes[].value``) and sign them with
``X-Hub-Signature-256``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from channels.whatsapp.payload import sign

__all__ = ["FakeGraph", "GraphCall", "message_delivery", "signed", "status_delivery",
           "text_delivery", "voice_note"]

WABA_ID = "102290129340398"
DISPLAY_NUMBER = "15550783881"


@dataclass
class GraphCall:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    at: float = field(default_factory=time.perf_counter)
    status: int = 200

    @property
    def kind(self) -> str:
        """``read``, ``text``, ``template``, ..."""
        if self.json.get("status") == "read":
            return "read"
        return str(self.json.get("type", "?"))


class FakeGraph:
    """A tiny Graph API ``/messages`` endpoint with scripted failures."""

    def __init__(self, *, token: str = "test-access-token", phone_number_id: str = "106540352242922",
                 version: str = "v23.0") -> None:
        self.token = token
        self.phone_number_id = phone_number_id
        self.version = version
        self.calls: list[GraphCall] = []
        #: answers for the next calls: (status, meta error code or None, Retry-After or None)
        self.failures: list[tuple[int, int | None, float | None]] = []
        #: numbers whose customer-service window is closed (free-form text refused)
        self.closed: set[str] = set()
        #: close the connection without answering the next N message sends
        self.drop = 0
        #: seconds each answer waits (a slow API)
        self.delay_s = 0.0
        #: customers' media files by media id (``GET /{version}/{media_id}``, then its url)
        self.media: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> FakeGraph:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def fail(self, status: int, code: int | None = None, *, times: int = 1,
             retry_after: float | None = None) -> None:
        """Answer the next ``times`` calls with this error."""
        self.failures.extend([(status, code, retry_after)] * times)

    def sent(self, to: str | None = None, kind: str = "text") -> list[GraphCall]:
        """Accepted calls of a kind (to one number)."""
        return [c for c in self.calls if c.status == 200 and c.kind == kind
                and (to is None or c.json.get("to") == to)]

    def texts(self, to: str) -> list[str]:
        """Bodies of the text messages sent to ``to``, in order."""
        return [c.json["text"]["body"] for c in self.sent(to)]

    async def wait_for(self, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Until ``check()`` holds (re-checked on every call the fake receives)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(check)

    # --- HTTP ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request_line = (await reader.readline()).decode()
                if not request_line.strip():
                    return
                method, path, _ = request_line.split(" ", 2)
                headers: dict[str, str] = {}
                while (line := (await reader.readline()).decode().strip()):
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    data = json.loads(body or b"{}")
                except ValueError:
                    data = {}
                call = GraphCall(method, path, headers, data)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if method == "GET":
                    status, payload, kind = self._media(call)
                    call.status = status
                    await self._record(call)
                    writer.write((f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                                  f"Content-Type: {kind}\r\nContent-Length: {len(payload)}"
                                  "\r\n\r\n").encode() + payload)
                    await writer.drain()
                    continue
                if self.drop and call.kind != "read":
                    self.drop -= 1
                    call.status = 0
                    await self._record(call)
                    return  # the connection closes with no answer
                status, answer, extra = self._answer(call)
                call.status = status
                await self._record(call)
                payload = json.dumps(answer).encode()
                head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                        "Content-Type: application/json", f"Content-Length: {len(payload)}",
                        *extra]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _record(self, call: GraphCall) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _media(self, call: GraphCall) -> tuple[int, bytes, str]:
        """``GET /{version}/{media_id}`` (the file's URL) and ``GET /media/{id}`` (it)."""
        if call.headers.get("authorization") != f"Bearer {self.token}":
            status, body, _ = _error(401, 190, "Invalid OAuth access token.")
            return status, json.dumps(body).encode(), "application/json"
        prefix = f"/{self.version}/"
        if call.path.startswith(prefix) and call.path[len(prefix):] in self.media:
            media_id = call.path[len(prefix):]
            data = self.media[media_id]
            info = {"messaging_product": "whatsapp", "url": f"{self.base_url}/media/{media_id}",
                    "mime_type": "audio/ogg", "sha256": hashlib.sha256(data).hexdigest(),
                    "file_size": len(data), "id": media_id}
            return 200, json.dumps(info).encode(), "application/json"
        if call.path.startswith("/media/") and call.path[7:] in self.media:
            return 200, self.media[call.path[7:]], "audio/ogg"
        status, body, _ = _error(404, 100, "(#100) Unsupported get request.",
                                 "GraphMethodException")
        return status, json.dumps(body).encode(), "application/json"

    def _answer(self, call: GraphCall) -> tuple[int, dict[str, Any], list[str]]:
        if call.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, 190, "Invalid OAuth access token.", "OAuthException")
        if call.method != "POST" or call.path != f"/{self.version}/{self.phone_number_id}/messages":
            return _error(400, 100, "Unsupported post request.", "GraphMethodException")
        if self.failures:
            status, code, retry_after = self.failures.pop(0)
            extra = [f"Retry-After: {retry_after:g}"] if retry_after is not None else []
            answer = _error(status, code or (130429 if status == 429 else 131000),
                            "Scripted failure")
            return answer[0], answer[1], extra
        body = call.json
        if body.get("messaging_product") != "whatsapp":
            return _error(400, 100, "(#100) The parameter messaging_product is required.")
        if body.get("status") == "read":
            if not str(body.get("message_id", "")).startswith("wamid."):
                return _error(400, 100, "(#100) Invalid parameter")
            typing = body.get("typing_indicator")
            if typing is not None and typing != {"type": "text"}:
                return _error(400, 100, "(#100) Invalid parameter typing_indicator")
            return 200, {"success": True}, []
        to = str(body.get("to", ""))
        if not to.isdigit():
            return _error(400, 100, "(#100) Invalid parameter to")
        kind = body.get("type")
        if kind == "text":
            text = (body.get("text") or {}).get("body", "")
            if not text or len(text) > 4096:
                return _error(400, 100, "(#100) Param text['body'] must be 1..4096 characters")
            if to in self.closed:
                return _error(400, 131047, "Re-engagement message", "OAuthException")
        elif kind == "template":
            template = body.get("template") or {}
            if not template.get("name") or not (template.get("language") or {}).get("code"):
                return _error(400, 100, "(#100) Invalid parameter template")
        else:
            return _error(400, 100, f"(#100) Unsupported type {kind!r}")
        return 200, {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                     "messages": [{"id": f"wamid.OUT{next(self._ids):06d}"}]}, []


def _error(status: int, code: int, message: str, kind: str = "OAuthException"
           ) -> tuple[int, dict[str, Any], list[str]]:
    return status, {"error": {"message": message, "type": kind, "code": code,
                              "fbtrace_id": "AbCdEf123"}}, []


# --- webhook deliveries ------------------------------------------------------------------

def _envelope(value: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": DISPLAY_NUMBER,
                          "phone_number_id": "106540352242922"}, **value}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}]}


def message_delivery(sender: str, message: dict[str, Any], *, wamid: str,
                     name: str = "Sheena Nelson", timestamp: int | None = None
                     ) -> dict[str, Any]:
    """A delivery of one customer message of any type (``message``: its type-specific part,
    e.g. ``{"type": "text", "text": {"body": "hi"}}``)."""
    return _envelope({
        "contacts": [{"profile": {"name": name}, "wa_id": sender}],
        "messages": [{"from": sender, "id": wamid,
                      "timestamp": str(timestamp or int(time.time())), **message}],
    })


def text_delivery(sender: str, text: str, *, wamid: str, **kwargs: Any) -> dict[str, Any]:
    """A delivery of one text message."""
    return message_delivery(sender, {"type": "text", "text": {"body": text}}, wamid=wamid,
                            **kwargs)


def status_delivery(recipient: str, wamid: str, status: str = "delivered") -> dict[str, Any]:
    """A delivery receipt of a message the business sent."""
    item: dict[str, Any] = {
        "id": wamid, "status": status, "timestamp": str(int(time.time())),
        "recipient_id": recipient,
        "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "service"}},
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "service"}}
    if status == "failed":
        item["errors"] = [{"code": 131047, "title": "Re-engagement message"}]
    return _envelope({"statuses": [item]})


def signed(payload: dict[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers Meta would post."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return body, {"Content-Type": "application/json",
                  "X-Hub-Signature-256": sign(secret.encode(), body)}


def voice_note(text: str) -> bytes:
    """``text`` spoken by espeak-ng, as a WhatsApp voice note: OGG/Opus, mono, 48 kHz."""
    import av

    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text],
                         capture_output=True, check=True).stdout
    out_buf = io.BytesIO()
    with av.open(io.BytesIO(wav)) as src, av.open(out_buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in [*src.decode(audio=0), None]:
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return out_buf.getvalue()
