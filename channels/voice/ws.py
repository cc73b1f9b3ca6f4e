"""The voice websocket, ``GET /v1/voice`` (docs/protocol.md §4), and the ``/voice`` page.

One connection: a receiver loop (binary audio → the call; JSON text frames → hello,
cancel, message, handoff) and the :class:`~channels.voice.call.Call` in one task group.
The session opens at the ``hello`` frame, or at the first audio frame as an anonymous
caller. Bad input gets an ``error`` event and the connection stays usable; a dropped
socket ends the call and cancels its reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from channels.voice.audio import StreamResampler, pcm16_to_float
from channels.voice.call import Call
from channels.voice.protocol import (
    MAX_FRAME_BYTES,
    VoiceErrorCode,
    VoiceHello,
    parse_voice_message,
)
from channels.voice.speech import SpeechLoader
from core.errors import DuetError
from gateway.events import ErrorEvent
from gateway.protocol import Cancel, ErrorCode, Handoff, ProtocolError, SendMessage
from gateway.state import AppState

__all__ = ["STATIC_DIR", "VoiceCalls", "voice_page", "voice_static", "voice_websocket"]

log = logging.getLogger("duet.voice")

STATIC_DIR = Path(__file__).parent / "static"


class VoiceCalls:
    """The process's calls: the speech parts they share and how many run."""

    def __init__(self, loader: SpeechLoader, max_calls: int) -> None:
        self.loader = loader
        self.max_calls = max_calls
        self.active = 0


class _WebsocketOutput:
    """A call's events and speech, as frames on the socket (a closed socket: dropped)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.closed = False
        self._lock = asyncio.Lock()

    async def send_event(self, data: dict[str, Any]) -> None:
        await self._send(text=json.dumps(data))

    async def send_audio(self, pcm: bytes) -> None:
        await self._send(data=pcm)

    async def _send(self, *, text: str | None = None, data: bytes | None = None) -> None:
        if self.closed:
            return
        async with self._lock:
            try:
                if text is not None:
                    await self.ws.send_text(text)
                else:
                    await self.ws.send_bytes(data or b"")
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.closed = True


class _Connection:
    def __init__(self, ws: WebSocket, state: AppState, calls: VoiceCalls) -> None:
        self.ws = ws
        self.state = state
        self.calls = calls
        self.output = _WebsocketOutput(ws)
        self.call: Call | None = None
        self.resampler: StreamResampler | None = None
        self._group: asyncio.TaskGroup | None = None
        self._odd = b""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                await self._receive_loop()
            finally:
                if self.call is not None:
                    self.call.close()

    async def _error(self, code: str, message: str) -> None:
        self.state.metrics.errors.labels(code).inc()
        await self.output.send_event(ErrorEvent(code=code, message=message).wire())

    async def _receive_loop(self) -> None:
        while not self.output.closed:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                if message.get("bytes") is not None:
                    await self._audio(message["bytes"])
                else:
                    await self._text(message.get("text") or "")
            except ProtocolError as exc:
                await self._error(exc.code, exc.message)
                if exc.code in (VoiceErrorCode.busy, VoiceErrorCode.speech_unavailable):
                    return

    async def _text(self, raw: str) -> None:
        msg = parse_voice_message(raw)
        if isinstance(msg, VoiceHello):
            if self.call is not None:
                raise ProtocolError(ErrorCode.invalid_message,
                                    "this connection already has a session")
            await self._open(msg)
            return
        call = self.call or await self._open(None)
        if isinstance(msg, SendMessage):
            await call.say(msg.text, message_id=msg.id)
        elif isinstance(msg, Cancel):
            await call.cancel()
        elif isinstance(msg, Handoff):
            await call.conversation.handoff(msg.reason)
        else:
            raise ProtocolError(ErrorCode.invalid_message, "unexpected message")

    async def _audio(self, data: bytes) -> None:
        if len(data) > MAX_FRAME_BYTES:
            raise ProtocolError(VoiceErrorCode.invalid_audio,
                                f"an audio frame holds at most {MAX_FRAME_BYTES} bytes")
        if data[:1] in (b"{", b"[") and _looks_like_json(data):
            raise ProtocolError(VoiceErrorCode.invalid_audio,
                                "JSON sent as a binary frame; send it as a text frame")
        call = self.call or await self._open(None)
        data = self._odd + data
        if len(data) % 2:
            # A frame split mid-sample: keep the odd byte for the next one.
            data, self._odd = data[:-1], data[-1:]
        else:
            self._odd = b""
        samples = pcm16_to_float(data)
        assert self.resampler is not None
        call.feed(self.resampler.push(samples))

    async def _open(self, hello: VoiceHello | None) -> Call:
        if self.calls.active >= self.calls.max_calls:
            raise ProtocolError(VoiceErrorCode.busy,
                                "every voice line is busy; try again in a moment",
                                retryable=True)
        try:
            identity = self.state.customer_tokens.verify(hello.customer_token if hello else None)
        except DuetError as exc:
            self.state.metrics.errors.labels(ErrorCode.unauthorized).inc()
            raise ProtocolError(ErrorCode.unauthorized,
                                "the customer token was not accepted") from exc
        try:
            speech = await self.calls.loader.get()
        except Exception as exc:
            log.exception("speech models failed to load")
            raise ProtocolError(VoiceErrorCode.speech_unavailable,
                                "speech is unavailable on this gateway") from exc
        chat = self.state.chat
        assert chat is not None
        conversation = await chat.open(
            identity, channel=hello.channel if hello else "voice",
            session_id=hello.session_id if hello else None,
            resume_token=hello.resume_token if hello else None)
        rate = hello.sample_rate if hello else 16000
        self.resampler = StreamResampler(rate, 16000)
        call = Call(speech, conversation, self.output)
        self.call = call
        await self.output.send_event({"type": "audio_format", "sample_rate":
                                      speech.tts.sample_rate, "channels": 1,
                                      "encoding": "pcm_s16le"})
        stream = conversation.events(resume_from=hello.resume_from if hello else None)
        assert self._group is not None
        self.calls.active += 1
        self._group.create_task(self._run_call(call, stream))
        return call

    async def _run_call(self, call: Call, stream: Any) -> None:
        try:
            async with stream:
                await call.run(stream)
        finally:
            self.calls.active -= 1
            if call.stats.frames_dropped:
                log.info("caller audio dropped", extra={"frames": call.stats.frames_dropped})
            if not self.output.closed:  # the call ended on its own (idle): hang up
                with contextlib.suppress(Exception):
                    await self.ws.close()


def _looks_like_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except RecursionError:  # JSON nested too deeply is JSON all the same, not audio
        return True
    except (ValueError, UnicodeDecodeError):
        return False
    return True


async def voice_websocket(ws: WebSocket, calls: VoiceCalls) -> None:
    """``GET /v1/voice``: one call."""
    await ws.accept()
    await _Connection(ws, ws.app.state.duet, calls).run()


async def voice_page(request: Request) -> Response:
    """``GET /voice``: talk to Duet from the browser's microphone."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


async def voice_static(request: Request) -> Response:
    """``GET /voice/{name}``: the page's script and style."""
    name = request.path_params["name"]
    path = STATIC_DIR / name
    if name not in {"voice.js", "voice.css", "capture-worklet.js"} or not path.is_file():
        return Response(status_code=404)
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(path, media_type=media)

