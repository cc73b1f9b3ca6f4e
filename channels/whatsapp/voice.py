"""Voice notes: downloaded from the Graph API, decoded, and transcribed with the voice
channel's speech-to-text (:class:`channels.voice.stt.WhisperSTT`, ``DUET_VOICE_STT_MODEL``).

The model is loaded on the first voice note (off the event loop) and kept; decoding the
OGG/Opus file (PyAV, through faster-whisper's ``decode_audio``) runs on a thread too. A
note that cannot be fetched, decoded or understood, or that is longer than
``MAX_SECONDS``, gets the polite request to type instead.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING

import numpy as np

from core.settings import Settings

if TYPE_CHECKING:
    from channels.voice.stt import SpeechToText

__all__ = ["MAX_SECONDS", "VoiceNotes"]

log = logging.getLogger("duet.channels.whatsapp")

SAMPLE_RATE = 16000
#: Longer notes are not transcribed (a question is seconds long; this bounds the work).
MAX_SECONDS = 120.0


def _decode(data: bytes) -> np.ndarray:
    from faster_whisper import decode_audio

    return decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)


class VoiceNotes:
    """Speech to text for voice notes, loaded on first use."""

    def __init__(self, settings: Settings, stt: SpeechToText | None = None) -> None:
        self._settings = settings
        self._stt = stt
        self._loading = asyncio.Lock()

    async def _model(self) -> SpeechToText:
        async with self._loading:
            if self._stt is None:
                from channels.voice.stt import WhisperSTT

                settings = self._settings
                self._stt = await asyncio.to_thread(
                    WhisperSTT, settings.voice_stt_model, threads=settings.voice_stt_threads,
                    workers=1)
            return self._stt

    async def transcribe(self, data: bytes) -> str | None:
        """The words of an audio file, or None when there are none to be had."""
        try:
            audio = await asyncio.to_thread(_decode, data)
        except Exception:
            log.warning("voice note not decoded", exc_info=True)
            return None
        if len(audio) > MAX_SECONDS * SAMPLE_RATE:
            log.info("voice note too long to transcribe",
                     extra={"seconds": round(len(audio) / SAMPLE_RATE, 1)})
            return None
        try:
            text = await (await self._model()).transcribe(audio)
        except Exception:
            log.exception("voice note not transcribed")
            return None
        return text.strip() or None

    def close(self) -> None:
        """Let the speech threads go."""
        if self._stt is not None:
            self._stt.close()
