"""The speech parts and the dual-agent router as LiveKit Agents plugins."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, llm, stt, tts, utils
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from channels.voice.audio import resample
from channels.voice.stt import SpeechToText
from channels.voice.tts import TextToSpeech
from gateway.events import Delta, Done, ErrorEvent
from gateway.service import Conversation, EventStream

__all__ = ["DuetSTT", "DuetTTS", "RouterLLM"]

log = logging.getLogger("duet.livekit")


class DuetSTT(stt.STT):
    """faster-whisper (the voice channel's :class:`SpeechToText`) as a LiveKit STT.

    Not streaming by itself: wrap it in ``stt.StreamAdapter(stt=..., vad=...)``.
    """

    def __init__(self, engine: SpeechToText, *, language: str = "en") -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False,
                                                          interim_results=False))
        self._engine = engine
        self._language = language

    @property
    def model(self) -> str:
        return "faster-whisper"

    @property
    def provider(self) -> str:
        return "duet"

    async def _recognize_impl(self, buffer: utils.AudioBuffer, *,
                              language: NotGivenOr[str] = NOT_GIVEN,
                              conn_options: APIConnectOptions) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32) / 32768
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1)
        text = await self._engine.transcribe(resample(samples, frame.sample_rate, 16000))
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language=self._language, text=text)])


class DuetTTS(tts.TTS):
    """Piper (the voice channel's :class:`TextToSpeech`) as a LiveKit TTS."""

    def __init__(self, engine: TextToSpeech) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False),
                         sample_rate=engine.sample_rate, num_channels=1)
        self.engine = engine

    @property
    def model(self) -> str:
        return "piper"

    @property
    def provider(self) -> str:
        return "duet"

    def synthesize(self, text: str, *,
                   conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
                   ) -> tts.ChunkedStream:
        return _PiperStream(tts=self, input_text=text, conn_options=conn_options)


class _PiperStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        engine: TextToSpeech = self._tts.engine  # type: ignore[attr-defined]
        output_emitter.initialize(request_id=utils.shortuuid(), sample_rate=engine.sample_rate,
                                  num_channels=1, mime_type="audio/pcm")
        cached = engine.cached(self.input_text.strip())
        if cached is not None:
            output_emitter.push(cached)
        else:
            async with engine.stream(self.input_text) as audio:
                async for chunk in audio:
                    output_emitter.push(chunk)
        output_emitter.flush()


class RouterLLM(llm.LLM):
    """Replies from the dual-agent router of one conversation.

    Each ``chat()`` submits the newest user message to the conversation and streams that
    turn's deltas (acknowledgment first, then the grounded answer) until its ``done``;
    a stream closed early (the caller interrupted) cancels the turn.
    """

    def __init__(self, conversation: Conversation, events: EventStream) -> None:
        super().__init__()
        self.conversation = conversation
        self.events = events

    @property
    def model(self) -> str:
        return "duet-router"

    @property
    def provider(self) -> str:
        return "duet"

    def chat(self, *, chat_ctx: llm.ChatContext, tools: list[Any] | None = None,
             conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
             **_: Any) -> llm.LLMStream:
        return _RouterStream(self, chat_ctx=chat_ctx, tools=tools or [],
                             conn_options=conn_options)


class _RouterStream(llm.LLMStream):
    async def _run(self) -> None:
        router: RouterLLM = self._llm  # type: ignore[assignment]
        text = _last_user_text(self._chat_ctx)
        if not text:
            return
        turn_id = await router.conversation.submit(text)
        finished = False
        try:
            async for event in router.events:
                if event.turn_id != turn_id:
                    continue
                if isinstance(event, Delta) and event.text:
                    self._event_ch.send_nowait(llm.ChatChunk(
                        id=turn_id, delta=llm.ChoiceDelta(role="assistant", content=event.text)))
                elif isinstance(event, ErrorEvent):
                    log.warning("turn failed", extra={"code": event.code})
                elif isinstance(event, Done):
                    finished = True
                    return
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    await router.conversation.cancel()


def _last_user_text(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if getattr(item, "type", None) == "message" and item.role == "user":
            return (item.text_content or "").strip()
    return ""
