"""The speech parts of a process, loaded once and shared by every call and transport.

:class:`Speech` bundles the VAD, the speech-to-text and the text-to-speech, each with its
own bounded threads (a slow synthesis never holds up a decode, and neither touches the
event loop). The websocket channel and the LiveKit worker both use it.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from channels.voice.stt import SpeechToText, WhisperSTT
from channels.voice.tts import PiperTTS, TextToSpeech
from channels.voice.vad import SileroVad, TurnDetector
from core.settings import Settings

__all__ = ["ACK_OPENERS", "ACK_PHRASES", "QUICK_ACKS", "Speech", "SpeechLoader", "trim_silence"]

log = logging.getLogger("duet.voice")

#: Whole acknowledgment lines that need no topic (agents/ack.py's neutral lines).
ACK_PHRASES = (
    "Let me look into that for you.",
    "One moment while I look into that.",
    "I'm checking on that for you now.",
)
#: What is said instead of a whole acknowledgment when the answer is already there: the
#: acknowledgment covers a wait, and there is none (its text still goes to the caller).
QUICK_ACKS = ("Sure.", "Right.")
#: The words acknowledgments start with before they name a topic; each is cached, so a
#: topical acknowledgment starts playing at once while its topic is synthesized.
ACK_OPENERS = (
    "One moment while I check on",
    "One moment while I check",
    "Let me look up",
    "Let me look into",
    "Let me check",
    "I'm pulling up",
    "I'm looking into",
    "I'm checking on",
)


def trim_silence(pcm: bytes, *, keep_ms: int = 30, rate: int = 22050,
                 level: float = 0.01) -> bytes:
    """``pcm_s16le`` without the trailing silence Piper puts after a sentence."""
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.nonzero(np.abs(samples) > level * 32767)[0]
    end = len(samples) if len(loud) == 0 else min(len(samples),
                                                  int(loud[-1]) + keep_ms * rate // 1000)
    return samples[:end].tobytes()


@dataclass
class Speech:
    """VAD, STT and TTS, loaded."""

    vad: SileroVad
    stt: SpeechToText
    tts: TextToSpeech
    settings: Settings
    #: One thread scores every call's VAD windows (~0.1 ms each), off the event loop.
    vad_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="duet-vad"))

    @classmethod
    def load(cls, settings: Settings) -> Speech:
        """Load every model (blocking: ~1–2 s; call it off the event loop)."""
        stt = WhisperSTT(settings.voice_stt_model, threads=settings.voice_stt_threads,
                         workers=settings.voice_stt_workers)
        tts = PiperTTS(settings.voice_tts_voice, threads=settings.voice_tts_threads,
                       workers=settings.voice_tts_workers)
        return cls(vad=SileroVad(), stt=stt, tts=tts, settings=settings)

    def detector(self) -> TurnDetector:
        """A turn detector for one call."""
        s = self.settings
        return TurnDetector(self.vad.scorer(), threshold=s.voice_vad_threshold,
                            min_speech_ms=s.voice_min_speech_ms,
                            pause_ms=s.voice_pause_ms,
                            end_silence_ms=s.voice_end_silence_ms,
                            max_utterance_s=s.voice_max_utterance_s)

    async def warm(self) -> None:
        """Cache the acknowledgment lines and openers, and run each model once."""
        await self.tts.warm(list(ACK_PHRASES))
        for quick in QUICK_ACKS:
            if self.tts.cached(quick) is None:
                audio = await self.tts.synthesize(quick)
                self.tts.remember(quick, trim_silence(audio, keep_ms=80,
                                                      rate=self.tts.sample_rate))
        for opener in ACK_OPENERS:
            if self.tts.cached(opener) is None:
                audio = await self.tts.synthesize(opener + ",")
                self.tts.remember(opener, trim_silence(audio, rate=self.tts.sample_rate))
        await self.stt.transcribe(np.zeros(16000, dtype=np.float32))

    def close(self) -> None:
        """Let every thread go."""
        self.stt.close()
        self.tts.close()
        self.vad_executor.shutdown(wait=False, cancel_futures=True)


class SpeechLoader:
    """Loads :class:`Speech` once, on first use (or at start-up), off the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._task: asyncio.Future[Speech] | None = None
        self._speech: Speech | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Speech:
        """The loaded speech parts (the first caller waits for them)."""
        if self._speech is not None:
            return self._speech
        async with self._lock:
            if self._speech is None:
                speech = await asyncio.to_thread(Speech.load, self.settings)
                await speech.warm()
                self._speech = speech
                log.info("speech models loaded")
        return self._speech

    def close(self) -> None:
        """Let the models' threads go."""
        if self._speech is not None:
            self._speech.close()
            self._speech = None
