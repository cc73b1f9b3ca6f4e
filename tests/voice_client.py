"""A voice websocket client for tests and the benchmark: streams WAV audio in real time and
keeps every event and audio frame it receives, with arrival times."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

AUDIO_DIR = Path(__file__).parent / "data" / "audio"


def read_wav(path: Path) -> tuple[bytes, int]:
    """PCM16 mono bytes and the sample rate of a WAV file."""
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.readframes(wav.getnframes()), wav.getframerate()


def last_voiced_s(pcm: bytes, rate: int, level: float = 0.02) -> float:
    """Seconds into the clip of its last sample louder than ``level`` (the speech's end)."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768)
    loud = np.nonzero(samples > level)[0]
    return float(loud[-1] + 1) / rate if len(loud) else 0.0


@dataclass
class VoiceClient:
    """One caller on ``/v1/voice``."""

    ws: websockets.ClientConnection
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[tuple[float, bytes]] = field(default_factory=list)
    #: Monotonic time at which the last voiced sample of the latest clip was sent.
    speech_end: float = 0.0
    _reader: asyncio.Task[None] | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(cls, base_ws_url: str, *, send_hello: bool = True,
                      **hello: Any) -> VoiceClient:
        ws = await websockets.connect(f"{base_ws_url}/v1/voice", max_size=2**22)
        client = cls(ws)
        client._reader = asyncio.create_task(client._read())
        if send_hello:
            await client.send(type="hello", **hello)
        return client

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                now = time.monotonic()
                if isinstance(frame, bytes):
                    self.audio.append((now, frame))
                else:
                    item = json.loads(frame)
                    item["_at"] = now
                    self.events.append(item)
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self._new.set()

    @property
    def closed(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def stream(self, pcm: bytes, rate: int, *, frame_ms: int = 20,
                     realtime: float = 1.0) -> None:
        """Send a clip in ``frame_ms`` frames at ``realtime`` × real time."""
        step = rate * frame_ms // 1000 * 2
        end_at = last_voiced_s(pcm, rate)
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), step)):
            await self.ws.send(pcm[offset:offset + step])
            sent_s = (offset + step) / 2 / rate
            if sent_s >= end_at and (offset / 2 / rate) < end_at:
                self.speech_end = time.monotonic()
            due = start + (i + 1) * frame_ms / 1000 / realtime
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def silence(self, seconds: float, rate: int = 16000) -> None:
        """Stream silence in real time."""
        await self.stream(b"\x00\x00" * int(seconds * rate), rate)

    async def wait_for(self, predicate: Any, timeout_s: float = 30.0, *,
                       since: int = 0) -> dict[str, Any]:
        """The first event (in arrival order, from index ``since``) for which ``predicate``
        is true."""
        deadline = time.monotonic() + timeout_s
        seen = since
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            if self.closed:
                raise AssertionError(f"socket closed; events: {self.types()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such event; events: {self.types()}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    async def wait_type(self, kind: str, timeout_s: float = 30.0, **fields: Any
                        ) -> dict[str, Any]:
        return await self.wait_for(
            lambda e: e["type"] == kind and all(e.get(k) == v for k, v in fields.items()),
            timeout_s)

    async def wait_audio(self, nbytes: int, *, after: float = 0.0,
                         timeout_s: float = 60.0) -> None:
        """Until ``nbytes`` of speech arrived after ``after``."""
        async with asyncio.timeout(timeout_s):
            while self.audio_bytes(after) < nbytes:
                if self.closed:
                    raise AssertionError("socket closed")
                self._new.clear()
                await self._new.wait()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def audio_bytes(self, after: float = 0.0) -> int:
        return sum(len(chunk) for at, chunk in self.audio if at >= after)

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await self._reader
