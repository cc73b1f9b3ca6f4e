"""The call's turn-taking and barge-in with stand-in speech parts (no models).

"Speech" is a tone and silence is zeros; the VAD scores loudness, the STT names the
length of what it hears, the TTS makes a second of tone per sentence. A stand-in
conversation answers every turn with an acknowledgment and a two-sentence answer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from channels.voice.call import Call
from channels.voice.speech import QUICK_ACKS
from channels.voice.stt import SpeechToText
from channels.voice.tts import TextToSpeech
from channels.voice.vad import TurnDetector
from core.settings import Settings
from gateway.events import Delta, Done, ServerEvent, Timings, UserMessage
from gateway.protocol import ErrorCode, ProtocolError

pytestmark = pytest.mark.unit

RATE = 16000


class LengthSTT(SpeechToText):
    """Says how many tenths of a second of sound it heard."""

    def _transcribe(self, audio: np.ndarray) -> str:
        loud = int(np.sum(np.abs(audio) > 0.05) / (RATE / 10))
        return f"question of {loud} tenths?" if loud else ""


class ToneTTS(TextToSpeech):
    sample_rate = 16000

    def _synthesize(self, text: str) -> Iterator[np.ndarray]:
        yield (np.ones(self.sample_rate, dtype=np.float32) * 8000).astype(np.int16)


@dataclass
class FakeSpeech:
    settings: Settings
    stt: SpeechToText = field(default_factory=LengthSTT)
    tts: TextToSpeech = field(default_factory=ToneTTS)
    vad_executor: Any = None

    def detector(self) -> TurnDetector:
        s = self.settings
        return TurnDetector(lambda w: 0.9 if np.abs(w).mean() > 0.05 else 0.0,
                            end_silence_ms=s.voice_end_silence_ms)


class FakeConversation:
    """Answers each turn after ``delay_s``: an ack, two sentences, done."""

    def __init__(self, delay_s: float = 0.05, answer_delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.answer_delay_s = answer_delay_s
        self.queue: asyncio.Queue[ServerEvent] = asyncio.Queue()
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._turn: str | None = None

    async def submit(self, text: str, *, message_id: str | None = None) -> str:
        if self._turn is not None:
            await self.cancel()
        turn_id = f"t{next(self._ids)}"
        self.submitted.append(text)
        self._turn = turn_id
        await self.queue.put(UserMessage(turn_id=turn_id, text=text))
        self._task = asyncio.create_task(self._answer(turn_id))
        return turn_id

    async def _answer(self, turn_id: str) -> None:
        await asyncio.sleep(self.delay_s)
        await self.queue.put(Delta(turn_id=turn_id, source="ack", text="Let me check."))
        await asyncio.sleep(self.answer_delay_s)
        await self.queue.put(Delta(turn_id=turn_id, source="answer",
                                   text=" First sentence here. Second sentence here."))
        await self.queue.put(Done(turn_id=turn_id, text="...", timings_ms=Timings(total=1)))
        self._turn = None

    async def cancel(self) -> None:
        if self._turn is None:
            raise ProtocolError(ErrorCode.no_turn, "no reply is in progress")
        assert self._task is not None
        self._task.cancel()
        self.cancelled.append(self._turn)
        await self.queue.put(Done(turn_id=self._turn, text="", cancelled=True,
                                  timings_ms=Timings(total=1)))
        self._turn = None

    def events(self) -> FakeConversation:
        return self

    def __aiter__(self) -> FakeConversation:
        return self

    async def __anext__(self) -> ServerEvent:
        return await self.queue.get()


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio: list[tuple[int, bytes]] = []  # (index of the next event, frame)

    async def send_event(self, data: dict[str, Any]) -> None:
        self.events.append(data)

    async def send_audio(self, pcm: bytes) -> None:
        self.audio.append((len(self.events), pcm))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def _settings() -> Settings:
    return Settings(_env_file=None, voice_end_silence_ms=300, voice_interim_ms=10_000,
                    voice_playout_lead_ms=100)


async def _call(conversation: FakeConversation) -> tuple[Call, Recorder, asyncio.Task[None]]:
    from concurrent.futures import ThreadPoolExecutor

    speech = FakeSpeech(_settings())
    speech.vad_executor = ThreadPoolExecutor(max_workers=1)
    for quick in QUICK_ACKS:
        speech.tts.remember(quick, b"\x10\x20" * 4000)
    out = Recorder()
    call = Call(speech, conversation, out)  # type: ignore[arg-type]
    task = asyncio.create_task(call.run(conversation))  # type: ignore[arg-type]
    return call, out, task


async def _feed(call: Call, seconds: float, loud: bool) -> None:
    """Real-time 20 ms frames of tone (speech) or zeros (silence)."""
    frame = np.full(RATE // 50, 0.3 if loud else 0.0, dtype=np.float32)
    for _ in range(int(seconds * 50)):
        call.feed(frame)
        await asyncio.sleep(0.02)


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in time")


async def _end(call: Call, task: asyncio.Task[None]) -> None:
    call.close()
    await task
    call.speech.vad_executor.shutdown()


async def test_a_turn_is_submitted_once_and_spoken_only_after_its_end() -> None:
    conversation = FakeConversation()
    call, out, task = await _call(conversation)
    await _feed(call, 1.0, loud=True)
    await _feed(call, 0.15, loud=False)  # a pause: the early decode and submit happen here
    await _until(lambda: conversation.submitted)
    await asyncio.sleep(0.1)
    assert not out.audio  # the end of the turn is not confirmed yet: nothing is heard
    await _feed(call, 0.4, loud=False)
    await _until(lambda: len(out.audio) > 10)
    assert conversation.submitted == ["question of 10 tenths?"]
    finals = [e for e in out.of("transcript") if e["final"]]
    assert [e["text"] for e in finals] == ["question of 10 tenths?"]
    await _until(lambda: out.of("voice_timings"))
    stages = out.of("voice_timings")[0]["ms_after_speech_end"]
    assert stages["end_of_turn"] >= stages["submitted"]  # submitted before the turn ended
    await _end(call, task)


async def test_speaking_on_after_a_pause_withdraws_the_early_turn_unheard() -> None:
    conversation = FakeConversation(delay_s=1.0)
    call, out, task = await _call(conversation)
    await _feed(call, 0.6, loud=True)
    await _feed(call, 0.15, loud=False)  # shorter than the end-of-turn silence
    await _until(lambda: conversation.submitted)
    await _feed(call, 0.6, loud=True)  # the caller goes on
    await _feed(call, 0.5, loud=False)
    await _until(lambda: len(conversation.submitted) == 2)
    assert conversation.submitted == ["question of 6 tenths?", "question of 12 tenths?"]
    assert conversation.cancelled == ["t1"]
    await _until(lambda: len(out.audio) > 10)
    assert not out.of("audio_clear")  # nothing of the withdrawn turn was ever heard
    await _end(call, task)


async def test_speech_over_the_reply_stops_it_at_the_next_frame() -> None:
    conversation = FakeConversation()
    call, out, task = await _call(conversation)
    await _feed(call, 0.8, loud=True)
    await _feed(call, 0.5, loud=False)
    await _until(lambda: len(out.audio) > 20)  # the reply is playing
    await _feed(call, 0.2, loud=True)  # barge in
    await _until(lambda: out.of("audio_clear"))
    clear = out.of("audio_clear")[0]
    # The answer was there at once: a quick acknowledgment, then the answer.
    assert clear["turn_id"] == "t1" and clear["spoken"].split()[0] in QUICK_ACKS
    assert "First sentence here." in clear["spoken"] and "Let me check" not in clear["spoken"]
    # The turn's text was complete long before its speech: nothing is left to cancel.
    assert conversation.cancelled == []
    at_clear = out.events.index(clear)
    sent_after = [f for i, f in out.audio if i > at_clear]
    await asyncio.sleep(0.3)
    assert len([f for i, f in out.audio if i > at_clear]) == len(sent_after) == 0
    await _end(call, task)


async def test_the_whole_acknowledgment_is_said_while_the_answer_is_awaited() -> None:
    conversation = FakeConversation(answer_delay_s=2.0)
    call, out, task = await _call(conversation)
    await _feed(call, 0.8, loud=True)
    await _feed(call, 0.5, loud=False)
    await _until(lambda: out.of("voice_timings"), timeout_s=15)
    timings = out.of("voice_timings")[0]
    assert timings["acknowledgment"] == "full"
    stages = timings["ms_after_speech_end"]
    assert stages["ack_audio"] < stages["answer_text"] <= stages["answer_audio"]
    await _end(call, task)


async def test_speech_while_the_answer_is_still_coming_cancels_the_turn() -> None:
    conversation = FakeConversation(delay_s=1.5)
    call, out, task = await _call(conversation)
    await _feed(call, 0.8, loud=True)
    await _feed(call, 0.5, loud=False)
    await _until(lambda: conversation.submitted)
    await _feed(call, 0.3, loud=True)  # before any of the reply
    await _until(lambda: conversation.cancelled == ["t1"])
    await _feed(call, 0.5, loud=False)
    # Nothing had been heard: the new speech continued the same utterance.
    await _until(lambda: len(conversation.submitted) == 2)
    assert conversation.submitted[1] == "question of 11 tenths?"
    await _end(call, task)


async def test_the_oldest_caller_audio_is_dropped_and_counted_when_behind() -> None:
    conversation = FakeConversation()
    speech = FakeSpeech(_settings())
    call = Call(speech, conversation, Recorder())  # type: ignore[arg-type]
    frame = np.zeros(320, dtype=np.float32)
    for _ in range(150):  # nobody reads: the queue holds 100
        call.feed(frame)
    assert call.stats.frames_in == 150 and call.stats.frames_dropped == 50


async def test_a_fragment_waits_for_the_end_of_the_turn() -> None:
    conversation = FakeConversation()
    call, out, task = await _call(conversation)
    call.speech.stt = FragmentSTT()
    await _feed(call, 0.8, loud=True)
    await _feed(call, 0.15, loud=False)  # a pause: decoded, but not a whole sentence
    await asyncio.sleep(0.2)
    assert conversation.submitted == []
    await _feed(call, 0.4, loud=False)
    await _until(lambda: conversation.submitted == ["how do I"])
    await _end(call, task)


class FragmentSTT(SpeechToText):
    def _transcribe(self, audio: np.ndarray) -> str:
        return "how do I"


class SlowSTT(LengthSTT):
    """A decode slower than the end-of-turn silence (a busy machine)."""

    def _transcribe(self, audio: np.ndarray) -> str:
        import time

        time.sleep(0.6)
        return super()._transcribe(audio)


async def test_speaking_on_while_the_ended_turn_is_still_decoding_continues_it() -> None:
    conversation = FakeConversation()
    call, out, task = await _call(conversation)
    call.speech.stt = SlowSTT()
    await _feed(call, 0.6, loud=True)
    await _feed(call, 0.35, loud=False)  # the turn ends by silence; its decode runs on
    await _feed(call, 0.5, loud=True)  # the caller goes on before it is done
    await _feed(call, 0.5, loud=False)
    await _until(lambda: conversation.submitted)
    await asyncio.sleep(0.8)  # a late first decode would submit by now
    assert conversation.submitted == ["question of 11 tenths?"]
    assert [e["text"] for e in out.of("transcript") if e["final"]] == ["question of 11 tenths?"]
    await _end(call, task)


async def test_a_slow_decode_does_not_hold_back_the_quick_acknowledgment() -> None:
    conversation = FakeConversation()
    call, out, task = await _call(conversation)
    call.speech.stt = SlowSTT()
    await _feed(call, 0.6, loud=True)
    await _feed(call, 0.5, loud=False)  # the turn ends by silence while its decode runs
    await _until(lambda: out.of("voice_timings"))
    final = next(i for i, e in enumerate(out.events) if e["type"] == "transcript")
    assert out.audio and out.audio[0][0] <= final  # "Sure." went out before the transcript
    timings = out.of("voice_timings")[0]
    stages = timings["ms_after_speech_end"]
    assert timings["acknowledgment"] == "quick"
    assert stages["first_audio"] < stages["final_transcript"] <= stages["answer_audio"]
    assert conversation.submitted == ["question of 6 tenths?"]
    await _end(call, task)
