"""Voice: callers over ``GET /v1/voice`` and the ``/voice`` page (issue #8).

- :mod:`channels.voice.audio` — PCM conversion and resampling (8 kHz phone lines);
- :mod:`channels.voice.vad` — Silero VAD and the end of a caller's turn;
- :mod:`channels.voice.stt` — faster-whisper (tiny.en bundled), on bounded threads;
- :mod:`channels.voice.tts` — Piper (en_US-joe-medium bundled), streamed, phrase cache;
- :mod:`channels.voice.speech` — the three, loaded once per process;
- :mod:`channels.voice.call` — one call: turn-taking, speculative turns, barge-in;
- :mod:`channels.voice.ws` — the websocket transport and the page.

The LiveKit transport (``channels.livekit``) uses the same speech parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from core.settings import Settings
from gateway.channel import Channel
from gateway.state import AppState

if TYPE_CHECKING:
    from channels.voice.speech import SpeechLoader
    from channels.voice.ws import VoiceCalls

log = logging.getLogger("duet.voice")

__all__ = ["VoiceChannel", "channel"]


class VoiceChannel(Channel):
    """``GET /v1/voice`` and the ``/voice`` page."""

    name = "voice"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The process's calls (set while the app runs).
        self.calls: VoiceCalls | None = None

    def routes(self) -> Sequence[BaseRoute]:
        from channels.voice.ws import voice_page, voice_static

        return [WebSocketRoute("/v1/voice", self._websocket),
                Route("/voice", voice_page, methods=["GET"]),
                Route("/voice/{name}", voice_static, methods=["GET"])]

    async def _websocket(self, ws: WebSocket) -> None:
        from channels.voice.ws import voice_websocket

        if self.calls is None:
            await ws.close(code=1013)
            return
        await voice_websocket(ws, self.calls)

    @contextlib.asynccontextmanager
    async def lifespan(self, state: AppState) -> AsyncIterator[None]:
        from channels.voice.speech import SpeechLoader
        from channels.voice.ws import VoiceCalls

        loader = SpeechLoader(self.settings)
        self.calls = VoiceCalls(loader, self.settings.voice_max_calls)
        try:
            async with asyncio.TaskGroup() as group:
                preload = (group.create_task(_preload(loader))
                           if self.settings.voice_preload else None)
                yield
                if preload is not None:
                    preload.cancel()
        finally:
            self.calls = None
            loader.close()


async def _preload(loader: SpeechLoader) -> None:
    """Load the models now; a failure is logged (calls then get ``speech_unavailable``)."""
    try:
        await loader.get()
    except Exception:
        log.exception("speech models failed to load")


def channel(settings: Settings) -> Channel:
    """Entry point: the voice channel."""
    return VoiceChannel(settings)
