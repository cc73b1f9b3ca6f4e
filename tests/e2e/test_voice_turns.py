"""The end of a caller's turn with the real VAD and Whisper, on spoken sentences.

Sentences are spoken by ``espeak-ng`` (Debian), with pauses put in between their words.
The call's conversation is a stand-in (tests/unit/test_voice_call.py): what matters here
is which transcripts become turns, and after how much silence a turn ends. The audio is
fed frame by frame, each frame after the call has heard the previous one and finished
any decode, so the outcome does not depend on how busy the machine is — except in the
last test, which streams in real time.
"""

from __future__ import annotations

import asyncio
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from channels.voice.audio import resample
from channels.voice.call import Call
from channels.voice.speech import Speech
from channels.voice.vad import WINDOW, WINDOW_MS, TurnEnded
from core.settings import Settings
from tests.unit.test_voice_call import FakeConversation, Recorder

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

RATE = 16000
FRAME = RATE // 50  # 20 ms


def _settings() -> Settings:
    return Settings(_env_file=None, voice_interim_ms=10_000, voice_end_silence_ms=250,
                    voice_quick_end_silence_ms=160, voice_pause_ms=64)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech() -> AsyncIterator[Speech]:
    loaded = await asyncio.to_thread(Speech.load, _settings())
    await loaded.warm()
    yield loaded
    loaded.close()


def spoken(tmp: Path, *parts: str | float) -> np.ndarray:
    """16 kHz float32 speech: each string spoken by espeak-ng, each number that many
    seconds of silence."""
    out = []
    for i, part in enumerate(parts):
        if isinstance(part, float):
            out.append(np.zeros(int(part * RATE), np.float32))
            continue
        path = tmp / f"part{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), part], check=True, timeout=30)
        with wave.open(str(path)) as wav:
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
            rate = wav.getframerate()
        audio = resample(pcm.astype(np.float32) / 32768, rate, RATE)
        loud = np.nonzero(np.abs(audio) > 0.01)[0]  # espeak's own silence out
        out.append(audio[loud[0]:loud[-1] + 1])
    return np.concatenate(out)


class _Ends:
    """Every turn end the call's detector reported: (samples of silence it waited)."""

    def __init__(self, call: Call) -> None:
        self.silences: list[int] = []
        detector = call.detector
        push = detector.push

        def recording(samples: np.ndarray) -> list[Any]:
            events = []
            for start in range(0, len(samples), WINDOW):
                for event in push(samples[start:start + WINDOW]):
                    events.append(event)
                    if isinstance(event, TurnEnded):
                        self.silences.append(detector.samples_seen - event.last_voiced)
            return events

        detector.push = recording  # type: ignore[method-assign]


async def _open(speech: Speech) -> tuple[Call, FakeConversation, Recorder, _Ends,
                                         asyncio.Task[None]]:
    conversation = FakeConversation()
    out = Recorder()
    call = Call(speech, conversation, out)  # type: ignore[arg-type]
    ends = _Ends(call)
    task = asyncio.create_task(call.run(conversation))  # type: ignore[arg-type]
    return call, conversation, out, ends, task


async def _until(predicate: Any, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not reached in time")


async def _feed_in_step(call: Call, audio: np.ndarray) -> None:
    """Each 20 ms frame once the call has scored the last and finished its decodes."""
    fed = 0
    for start in range(0, len(audio), FRAME):
        frame = audio[start:start + FRAME]
        call.feed(frame)
        fed += len(frame)
        whole = fed // WINDOW * WINDOW
        await _until(lambda w=whole: call.detector.samples_seen >= w)
        await asyncio.sleep(0.002)  # the events of that window are handled
        await _until(lambda: call.speech.stt.busy == 0)


async def _feed_in_real_time(call: Call, audio: np.ndarray) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i, start in enumerate(range(0, len(audio), FRAME)):
        call.feed(audio[start:start + FRAME])
        await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - loop.time()))


async def _hang_up(call: Call, task: asyncio.Task[None]) -> None:
    call.close()
    await task


async def test_a_whole_question_ends_the_turn_after_the_shorter_silence(
        speech: Speech, tmp_path: Path) -> None:
    call, conversation, _, ends, task = await _open(speech)
    await _feed_in_step(call, spoken(tmp_path, 0.3, "How do I factory reset the hub?", 1.0))
    await _until(lambda: conversation.submitted)
    assert len(conversation.submitted) == 1 and "reset" in conversation.submitted[0].lower()
    settings = speech.settings
    # One end, after the short silence (160 ms: 5 windows of 32 ms), not 250 ms (7).
    assert len(ends.silences) == 1
    assert ends.silences[0] <= -(-settings.voice_quick_end_silence_ms // WINDOW_MS) * WINDOW
    assert ends.silences[0] < settings.voice_end_silence_ms // WINDOW_MS * WINDOW
    await _hang_up(call, task)


async def test_a_pause_after_a_conjunction_does_not_end_the_turn(
        speech: Speech, tmp_path: Path) -> None:
    call, conversation, out, ends, task = await _open(speech)
    audio = spoken(tmp_path, 0.3, "My hub stopped working and", 0.2,
                   "the light blinks red.", 1.0)
    await _feed_in_step(call, audio)
    await _until(lambda: [e for e in out.of("transcript") if e["final"]]
                 and conversation.submitted)
    # The fragment was decoded at the pause, but only the whole sentence became a turn.
    assert len(ends.silences) == 1
    assert len(conversation.submitted) == 1
    turn = conversation.submitted[0].lower()
    assert "working" in turn and "light" in turn
    await _hang_up(call, task)


async def test_a_sentence_with_a_pause_in_the_middle_is_one_turn(
        speech: Speech, tmp_path: Path) -> None:
    """A pause after words that could end a sentence: the turn may end early, but the
    caller who speaks on before hearing more than the quick "Sure." continues it."""
    call, conversation, out, _, task = await _open(speech)
    audio = spoken(tmp_path, 0.3, "My hub is broken.", 0.35, "It does not turn on any more.",
                   1.5)
    await _feed_in_real_time(call, audio)
    finals = [e["text"].lower() for e in out.of("transcript") if e["final"]]
    await _until(lambda: any("turn" in t.lower() for t in conversation.submitted))
    last = conversation.submitted[-1].lower()
    assert "broken" in last and "turn" in last, (finals, conversation.submitted)
    # Nothing but the quick acknowledgment of the early turn reached the caller's ear.
    for clear in out.of("audio_clear"):
        assert clear["spoken"].split(" ", 1)[0].rstrip(".") in ("Sure", "Right", "")
    await _hang_up(call, task)


@pytest.mark.parametrize("name", ["jfk.flac", "OSR_us_000_0034_8k.wav"])
async def test_the_shorter_end_cuts_a_real_recording_only_where_the_full_one_does(
        speech: Speech, name: str) -> None:
    """Recordings no one here made (a speech; telephone sentences), through the VAD with
    the call's rule: at each pause the audio so far is decoded, and a transcript that
    reads complete lets the turn end after the shorter silence. The turns are the ones
    the full end-of-turn silence gives — no sentence is cut at a pause in its middle."""
    from bench.voice_bench import _load
    from channels.voice.turns import reads_complete
    from channels.voice.vad import Pause

    audio, _ = _load(name)
    audio = np.concatenate([audio, np.zeros(RATE, np.float32)])
    settings = speech.settings
    ends: dict[bool, list[int]] = {}
    judged_complete = 0
    for early in (True, False):
        detector = speech.detector()
        ends[early] = []
        for start in range(0, len(audio), FRAME):
            for event in detector.push(audio[start:start + FRAME]):
                if isinstance(event, TurnEnded):
                    ends[early].append(event.last_voiced)
                elif isinstance(event, Pause) and early:
                    text = await speech.stt.transcribe(event.audio)
                    if reads_complete(text):
                        judged_complete += 1
                        detector.end_after(event.last_voiced,
                                           settings.voice_quick_end_silence_ms)
    assert judged_complete  # the shorter end was in play
    assert ends[True] and ends[True] == ends[False]
