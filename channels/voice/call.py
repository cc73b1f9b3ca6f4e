"""One voice call over a conversation: hear turns, speak replies, yield to barge-in.

A :class:`Call` is transport-agnostic: a transport feeds it the caller's audio
(:meth:`Call.feed`, 16 kHz float32) and gives it a :class:`CallOutput` to send JSON
events and speech through. Inside, one ``TaskGroup`` holds three loops:

- **listen**: caller audio (a bounded queue that drops the oldest frames and counts the
  drops) → the turn detector (Silero VAD on the VAD thread) → interim transcripts while
  the caller speaks, the final transcript decoded from the first pause, a submitted turn;
- **render**: the session's typed events → JSON to the caller, and text to speak:
  ``Delta(ack)`` from the phrase cache, ``Delta(answer|human|system)`` sentence by sentence;
- **speak**: synthesized speech sent in 20 ms frames, at most ``voice_playout_lead_ms``
  ahead of real time, so a barge-in stops it within one frame.

Turn-taking. At the first short pause (``voice_pause_ms`` of silence) the utterance up
to its last voiced sample is decoded: if the caller stays quiet, that audio *is* the
turn, so this transcript is final. When it reads as a whole sentence
(:func:`~channels.voice.turns.reads_complete`) it is submitted as soon as it is ready,
so the acknowledgment and the retrieval start early, and the turn may end after the
shorter ``voice_quick_end_silence_ms``; a fragment waits for the full end-of-turn
silence. Nothing of a turn is spoken until its end is confirmed; then a quick "Sure."
opens the reply at once. If the caller speaks again before hearing anything past that
"Sure." (an early turn not yet confirmed, an ended turn still being decoded, or a reply
not yet heard), the turn is taken back and the new speech continues the same utterance.

Barge-in. Speech from the caller while a reply is pending or playing stops the audio at
the next frame, clears what the client buffered (``audio_clear``, with what was spoken),
and cancels the turn; what was already said stays in the session's transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from channels.voice.executor import NORMAL, URGENT
from channels.voice.speech import ACK_OPENERS, QUICK_ACKS, Speech
from channels.voice.stt import normalize_transcript
from channels.voice.tts import SentenceSplitter
from channels.voice.turns import reads_complete
from channels.voice.vad import SAMPLE_RATE, Pause, SpeechStarted, TurnEnded
from gateway.events import Delta, Done, ServerEvent
from gateway.protocol import ProtocolError
from gateway.service import Conversation, EventStream

__all__ = ["Call", "CallOutput", "CallStats"]

log = logging.getLogger("duet.voice")

FRAME_MS = 20
AUDIO_QUEUE_FRAMES = 100  # ~2 s of 20 ms frames; a slower reader drops the oldest
#: How long the topic of an acknowledgment waits for the answer before it is synthesized
#: (the quick "Sure." before it lasts ~0.4 s, the synthesis ~0.1–0.2 s).
ACK_GRACE_S = 0.12


class CallOutput(Protocol):
    """Where a call's events and speech go (a websocket, a LiveKit track)."""

    async def send_event(self, data: dict[str, Any]) -> None:
        """Send one JSON event."""

    async def send_audio(self, pcm: bytes) -> None:
        """Send ``pcm_s16le`` speech at the TTS sample rate."""


@dataclass
class CallStats:
    """What a call counted."""

    frames_in: int = 0
    frames_dropped: int = 0
    utterances: int = 0
    early_turns: int = 0
    withdrawn: int = 0
    barge_ins: int = 0


@dataclass
class _TurnAudio:
    """The call's view of one submitted turn."""

    turn_id: str
    #: Monotonic time the sound of the utterance ended (the latency origin).
    speech_end: float
    #: Set when the turn may be heard (its end confirmed), or withdrawn.
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: bool = False
    ended: bool = False
    #: The answer's text has arrived (a whole acknowledgment would only delay it).
    answer_ready: bool = False
    #: Set with ``answer_ready``: the acknowledgment's topic waits on it before it is
    #: synthesized (usually never: the answer comes a few milliseconds after the ack).
    answer_event: asyncio.Event = field(default_factory=asyncio.Event)
    #: How the acknowledgment was said: "quick" ("Sure." and the answer was there),
    #: "full" (the router's words too, while the answer was awaited), or "".
    ack_spoken: str = ""
    #: When the reply's first words past the quick acknowledgment reach the caller's ear
    #: (monotonic; speech is sent ahead of real time), once they are sent.
    reply_at: float | None = None
    #: Some speech of the reply was given to the speaker (or the quick acknowledgment).
    queued: bool = False
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    timings: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, clock: Callable[[], float]) -> None:
        if name not in self.timings:
            self.timings[name] = round((clock() - self.speech_end) * 1000, 1)

    def decide(self, confirmed: bool) -> None:
        if not self.decided.is_set():
            self.confirmed = confirmed
            self.decided.set()


@dataclass
class _Utterance:
    """A caller's utterance between its first pause and its settled turn."""

    last_voiced: int
    speech_end: float
    audio: np.ndarray
    ended: bool = False
    withdrawn: bool = False
    turn: _TurnAudio | None = None
    ended_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Its settling task is still decoding (cancelling it then submits nothing).
    decoding: bool = True
    #: The quick acknowledgment was queued at its end, before its transcript existed,
    #: and when it started playing.
    pre_ack: bool = False
    pre_ack_at: float | None = None


@dataclass
class _Speak:
    """One piece of speech waiting for the speaker."""

    epoch: int
    text: str
    turn: _TurnAudio | None
    #: The audio, or None until it is synthesized.
    audio: bytes | None
    kind: str
    #: The first words of a reply: synthesized before other callers' later sentences.
    urgent: bool = False
    #: The answer's first words, synthesized from the moment their text came.
    early: asyncio.Task[bytes] | None = None
    #: The utterance a quick acknowledgment said before its turn existed belongs to.
    utterance: _Utterance | None = None


class _HangUp(Exception):
    """The call is over: stop everything it started."""


class Call:
    """A voice call on one conversation."""

    def __init__(self, speech: Speech, conversation: Conversation, output: CallOutput, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.speech = speech
        self.settings = speech.settings
        self.conversation = conversation
        self.output = output
        self.clock = clock
        self.stats = CallStats()
        self.detector = speech.detector()
        self._audio_in: deque[np.ndarray] = deque(maxlen=AUDIO_QUEUE_FRAMES)
        self._audio_ready = asyncio.Event()
        self._speak_queue: asyncio.Queue[_Speak] = asyncio.Queue(maxsize=64)
        # Synthesized speech waiting to be played: one piece ahead of the one playing, so
        # a caller's long answer never holds the TTS threads that other callers wait for.
        self._audio_queue: asyncio.Queue[_Speak] = asyncio.Queue(maxsize=1)
        self._group: asyncio.TaskGroup | None = None
        self._epoch = 0
        self._turns: dict[str, _TurnAudio] = {}
        self._current: _TurnAudio | None = None
        self._utterance: _Utterance | None = None
        self._interim_task: asyncio.Task[None] | None = None
        self._last_interim_at = 0
        self._carry = np.zeros(0, dtype=np.float32)
        self._submit_lock = asyncio.Lock()
        self._playing: _Speak | None = None
        self._spoken: list[str] = []
        self._spoken_turn: _TurnAudio | None = None
        self._started_speech: set[tuple[str, str]] = set()
        self._origin = 0.0  # when the speech being sent started, and how much was sent
        self._sent_s = 0.0
        # When the audio given to the speaker ends at the caller's ear, and how much
        # synthesized audio waits for the speaker (the deadline of the next synthesis).
        self._line_until = 0.0
        self._waiting_s = 0.0
        self._synthesizing: _Speak | None = None
        self._last_activity = clock()
        self._closed = asyncio.Event()

    # --- the transport's side ------------------------------------------------------------

    def feed(self, samples: np.ndarray) -> None:
        """The caller's next audio (16 kHz float32); the oldest is dropped when behind."""
        self.stats.frames_in += 1
        if len(self._audio_in) == self._audio_in.maxlen:
            self.stats.frames_dropped += 1
        self._audio_in.append(samples)
        self._audio_ready.set()

    async def say(self, text: str, *, message_id: str | None = None) -> str:
        """A typed message from the caller (a ``message`` frame); its reply is spoken."""
        async with self._submit_lock:
            turn_id = await self.conversation.submit(text, message_id=message_id)
            self._register(_TurnAudio(turn_id, self.clock()))
            self._turns[turn_id].decide(True)
            return turn_id

    async def cancel(self) -> None:
        """The caller asked to stop the reply (a ``cancel`` frame)."""
        self._stop_audio()
        await self.conversation.cancel()

    def close(self) -> None:
        """End the call (the transport is gone)."""
        self._closed.set()
        self._audio_ready.set()

    async def run(self, events: EventStream) -> None:
        """Listen, render and speak until :meth:`close` or the idle timeout."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._listen())
                group.create_task(self._render(events))
                group.create_task(self._synthesize_ahead())
                group.create_task(self._speak())
                await self._closed.wait()
                raise _HangUp  # the task group cancels every task of the call
        except* _HangUp:
            pass
        finally:
            self._drain_speak_queue()
            turn = self._current
            if turn is not None and not turn.ended:  # a hung-up caller needs no answer
                with contextlib.suppress(Exception):
                    await self.conversation.cancel()

    # --- listen --------------------------------------------------------------------------

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        idle_s = self.settings.voice_idle_timeout_s
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._audio_ready.wait(), timeout=min(idle_s, 5.0))
            self._audio_ready.clear()
            if self.clock() - self._last_activity > idle_s:
                await self.output.send_event({"type": "error", "code": "idle_timeout",
                                              "message": "no speech for a long time; "
                                                         "the call is ended"})
                self.close()
                return
            if not self._audio_in:
                continue
            chunk = np.concatenate(list(self._audio_in))
            self._audio_in.clear()
            events = await loop.run_in_executor(self.speech.vad_executor,
                                                self.detector.push, chunk)
            for event in events:
                await self._on_vad(event)
            if self.detector.speaking:
                self._last_activity = self.clock()
                self._maybe_interim()

    def _speech_end_at(self, sample: int) -> float:
        """When the caller's sample ``sample`` reached us (the latency origin: the end of
        the speech's sound)."""
        return self.clock() - (self.detector.samples_seen - sample) / SAMPLE_RATE

    async def _on_vad(self, event: SpeechStarted | Pause | TurnEnded) -> None:
        if isinstance(event, SpeechStarted):
            self._last_activity = self.clock()
            self._last_interim_at = 0
            await self._barge_in()
        elif isinstance(event, Pause):
            self._begin_utterance(event.audio, event.last_voiced, event.last_sound)
        elif isinstance(event, TurnEnded):
            self.stats.utterances += 1
            utterance = self._utterance
            if utterance is None or utterance.last_voiced != event.last_voiced:
                utterance = self._begin_utterance(event.audio, event.last_voiced,
                                                  event.last_sound)
            utterance.ended = True
            utterance.ended_event.set()
            self._carry = np.zeros(0, dtype=np.float32)
            if utterance.turn is not None:
                utterance.turn.timings["end_of_turn"] = round(
                    (self.clock() - utterance.speech_end) * 1000, 1)
                await self._confirm(utterance.turn)
            elif not utterance.withdrawn:
                await self._pre_acknowledge(utterance)

    def _begin_utterance(self, audio: np.ndarray, last_voiced: int,
                         last_sound: int) -> _Utterance:
        if self._interim_task is not None:
            self._interim_task.cancel()
            self._interim_task = None
        self._withdraw()
        utterance = _Utterance(last_voiced, self._speech_end_at(last_sound or last_voiced),
                               self._with_carry(audio))
        self._utterance = utterance
        assert self._group is not None
        utterance.task = self._group.create_task(self._settle(utterance))
        return utterance

    def _withdraw(self) -> None:
        """The caller spoke on before the turn could be heard: take back its early turn,
        unheard. Before the end of the turn the detector is still collecting the
        utterance; after it (the silence was long enough, but the transcript was still
        being decoded or submitted) the new speech carries the utterance on."""
        utterance = self._utterance
        if utterance is None or utterance.withdrawn:
            return
        if utterance.ended:
            if utterance.turn is not None or utterance.task is None or utterance.task.done():
                return  # its turn is confirmed: a barge-in's business
            self._carry = utterance.audio
        utterance.withdrawn = True
        utterance.ended_event.set()  # a fragment waiting for its end gives up
        self.stats.withdrawn += 1
        if utterance.task is not None and utterance.decoding:
            utterance.task.cancel()  # a decode not started never starts
        if utterance.turn is not None:
            utterance.turn.decide(False)
            assert self._group is not None
            self._group.create_task(self._cancel_quietly())

    async def _cancel_quietly(self) -> None:
        with contextlib.suppress(ProtocolError):
            await self.conversation.cancel()

    def _with_carry(self, audio: np.ndarray) -> np.ndarray:
        return np.concatenate([self._carry, audio]) if len(self._carry) else audio

    def _maybe_interim(self) -> None:
        every = self.settings.voice_interim_ms * SAMPLE_RATE // 1000
        have = self.detector.utterance_samples
        if (have - self._last_interim_at < every or
                (self._interim_task is not None and not self._interim_task.done())):
            return
        self._last_interim_at = have
        audio = self._with_carry(self.detector.utterance())
        assert self._group is not None
        self._interim_task = self._group.create_task(self._decode_interim(audio))

    async def _decode_interim(self, audio: np.ndarray) -> None:
        try:
            text = await self.speech.stt.transcribe_interim(audio)
        except Exception:
            log.exception("interim decode failed")
            return
        if text and self.detector.speaking:
            await self.output.send_event({"type": "transcript", "text": text, "final": False})

    async def _settle(self, utterance: _Utterance) -> None:
        """Decode the utterance and submit it (before its end is confirmed, if quick)."""
        try:
            text = await self.speech.stt.transcribe(utterance.audio)
        except Exception:
            log.exception("speech decode failed")
            text = ""
        utterance.decoding = False
        if utterance.withdrawn:
            return
        if text and not utterance.ended:
            if reads_complete(text):
                # A whole sentence: the turn may end after a shorter silence.
                self.detector.end_after(utterance.last_voiced,
                                        self.settings.voice_quick_end_silence_ms)
            else:
                # Not a whole sentence yet: wait for the end of the turn (or the rest of
                # it) rather than start a turn on a fragment.
                await utterance.ended_event.wait()
                if utterance.withdrawn:
                    return
        await self.output.send_event({"type": "transcript", "text": text, "final": True})
        if not normalize_transcript(text):
            return
        turn = await self._submit(text, utterance.speech_end)
        if turn is None:
            return
        turn.mark("final_transcript", self.clock)
        if utterance.withdrawn:
            turn.decide(False)
            await self._cancel_quietly()
            return
        utterance.turn = turn
        if utterance.pre_ack:  # "Sure." was said at the end of the turn, before this
            turn.ack_spoken, turn.queued = "quick", True
            if self._spoken_turn is None and self._spoken:
                self._spoken_turn = turn  # what the caller heard of this reply
            at = utterance.pre_ack_at or self.clock()
            for stage in ("ack_audio", "first_audio"):
                turn.timings[stage] = round((at - turn.speech_end) * 1000, 1)
        if utterance.ended:
            turn.timings.setdefault("end_of_turn", turn.timings["final_transcript"])
            await self._confirm(turn)
        else:
            self.stats.early_turns += 1

    async def _pre_acknowledge(self, utterance: _Utterance) -> None:
        """The silence ended the turn but its transcript is still being decoded (a busy
        machine: ten callers' decodes take a second of CPU): say the quick "Sure." now,
        as a person would, instead of after the decode. If the caller speaks on, it stops
        and the utterance goes on; if the audio held no words, "Sure." was all."""
        quick = QUICK_ACKS[(len(self._turns) + 1) % len(QUICK_ACKS)]
        audio = self.speech.tts.cached(quick)
        if audio is None:
            return
        utterance.pre_ack = True
        await self._enqueue(_Speak(self._epoch, quick, None, audio, "pre_ack",
                                   utterance=utterance))

    async def _confirm(self, turn: _TurnAudio) -> None:
        """The caller's turn is over: its reply may be heard. If nothing of the reply is
        here yet, open it with the quick acknowledgment now, not when the router's
        acknowledgment arrives (10–40 ms later)."""
        turn.decide(True)
        if not turn.queued:
            await self._enqueue(_Speak(self._epoch, "", turn, b"", "ack"))

    async def _submit(self, text: str, speech_end: float) -> _TurnAudio | None:
        async with self._submit_lock:
            try:
                turn_id = await self.conversation.submit(text)
            except ProtocolError as exc:
                await self.output.send_event({"type": "error", "code": exc.code,
                                              "message": exc.message})
                return None
            turn = _TurnAudio(turn_id, speech_end)
            turn.mark("submitted", self.clock)
            self._register(turn)
            return turn

    def _register(self, turn: _TurnAudio) -> None:
        self._turns[turn.turn_id] = turn
        self._current = turn
        while len(self._turns) > 8:
            old = self._turns.pop(next(iter(self._turns)))
            self._started_speech -= {(old.turn_id, "ack"), (old.turn_id, "answer")}

    async def _barge_in(self) -> None:
        """The caller speaks: take back an unheard early turn, or stop the reply."""
        self._withdraw()
        turn = self._current
        pending = turn is not None and not turn.ended and turn.confirmed
        # Speech of the reply is on its way: being sent, synthesized, queued, or sent
        # ahead of real time and still to be heard.
        playing = (self._playing is not None or self._synthesizing is not None
                   or not self._speak_queue.empty() or not self._audio_queue.empty()
                   or self.clock() < self._line_until)
        if not (pending or playing):
            return
        self.stats.barge_ins += 1
        utterance = self._utterance
        if (turn is not None and not self._heard_reply(turn) and utterance is not None
                and utterance.turn is turn):
            # Nothing of the reply was heard but its quick "Sure.": the caller had only
            # paused, and the new speech continues the same utterance.
            self._carry = utterance.audio
        self._stop_audio()
        if pending:
            await self._cancel_quietly()

    def _heard_reply(self, turn: _TurnAudio) -> bool:
        """Whether the caller has heard anything of ``turn``'s reply beyond its quick
        acknowledgment (speech is sent ahead of real time: sent is not yet heard)."""
        return turn.reply_at is not None and self.clock() >= turn.reply_at

    def _stop_audio(self) -> None:
        spoken = " ".join(self._spoken)
        turn = self._spoken_turn if self._spoken else self._current
        self._epoch += 1
        self._drain_speak_queue()
        self._line_until, self._waiting_s = self.clock(), 0.0
        was_playing = self._playing is not None
        self._playing = None
        self._spoken, self._spoken_turn = [], None
        if was_playing or spoken:
            assert self._group is not None
            self._group.create_task(self.output.send_event(
                {"type": "audio_clear", "turn_id": turn.turn_id if turn else None,
                 "spoken": spoken}))

    def _drain_speak_queue(self) -> None:
        for queue in (self._speak_queue, self._audio_queue):
            while not queue.empty():
                item = queue.get_nowait()
                if item.early is not None:
                    item.early.cancel()

    # --- render --------------------------------------------------------------------------

    async def _render(self, events: EventStream) -> None:
        async for event in events:
            await self.output.send_event(event.wire())
            await self._on_event(event)

    async def _on_event(self, event: ServerEvent) -> None:
        turn = self._turns.get(event.turn_id or "")
        if isinstance(event, Delta):
            self._last_activity = self.clock()
            if event.source == "ack":
                if turn is not None:
                    turn.mark("ack_text", self.clock)
                await self._say_ack(event.text, turn)
                return
            if turn is not None and "answer_text" not in turn.timings:
                turn.mark("answer_text", self.clock)
                turn.answer_ready = True
                turn.answer_event.set()
            splitter = turn.splitter if turn is not None else SentenceSplitter()
            for sentence in splitter.push(event.text):
                await self._say(sentence, turn, kind=event.source)
            if turn is None:
                rest = splitter.flush()
                if rest:
                    await self._say(rest, None, kind=event.source)
        elif isinstance(event, Done) and turn is not None:
            turn.ended = True
            rest = turn.splitter.flush()
            if rest and not event.cancelled:
                await self._say(rest, turn, kind="answer")
            await self._say("", turn, kind="done")

    async def _say_ack(self, text: str, turn: _TurnAudio | None) -> None:
        tts = self.speech.tts
        cached = tts.cached(text)
        if cached is not None:
            await self._enqueue(_Speak(self._epoch, text, turn, cached, "ack"))
            return
        for opener in ACK_OPENERS:
            if text.startswith(opener + " ") and (audio := tts.cached(opener)) is not None:
                await self._enqueue(_Speak(self._epoch, opener, turn, audio, "ack"))
                text = text[len(opener):].strip()
                break
        await self._say(text, turn, kind="ack")

    async def _say(self, text: str, turn: _TurnAudio | None, *, kind: str) -> None:
        # The first piece of a reply's acknowledgment and of its answer go first.
        key = (turn.turn_id if turn is not None else "", "ack" if kind == "ack" else "answer")
        urgent = turn is None or key not in self._started_speech
        self._started_speech.add(key)
        item = _Speak(self._epoch, text, turn, None if text else b"", kind, urgent)
        if urgent and text and kind != "ack" and turn is not None:
            # The answer's first words start now, not when the speaker gets to them
            # (it may be saying "Sure." with acknowledgment pieces queued before them).
            assert self._group is not None
            item.early = self._group.create_task(self._synthesize(text, urgent=True))
        await self._enqueue(item)

    async def _synthesize(self, text: str, *, urgent: bool = False) -> bytes:
        # A later sentence is needed when the audio the caller has yet to hear runs out:
        # what plays now and what waits for the speaker.
        deadline = None if urgent else (max(self.clock(), self._line_until)
                                        + self._waiting_s)
        try:
            return await self.speech.tts.synthesize(
                text, priority=URGENT if urgent else NORMAL, deadline=deadline)
        except Exception:
            log.exception("synthesis failed", extra={"text": text[:80]})
            return b""

    async def _enqueue(self, item: _Speak) -> None:
        if item.turn is not None:
            item.turn.queued = True
        await self._speak_queue.put(item)

    # --- speak ---------------------------------------------------------------------------

    async def _speak(self) -> None:
        while True:
            item = await self._audio_queue.get()
            self._waiting_s = 0.0
            if item.epoch != self._epoch:
                continue
            turn = item.turn
            if turn is not None:
                await turn.decided.wait()
                if not turn.confirmed or item.epoch != self._epoch:
                    continue
            if item.kind == "done":
                if turn is not None and "answer_audio" not in turn.timings:
                    await self._send_timings(turn)  # a reply with no answer audio
                continue
            if item.kind == "ack" and turn is not None:
                await self._acknowledge(item, turn)
            elif item.kind == "pre_ack" and item.utterance is not None:
                if item.utterance.withdrawn:
                    continue
                item.utterance.pre_ack_at = self.clock()
                await self._play(item, item.text, item.audio or b"", quick=True)
            else:
                await self._play(item, item.text, item.audio or b"")

    async def _acknowledge(self, item: _Speak, turn: _TurnAudio) -> None:
        """The acknowledgment covers the wait for the answer, no longer: a quick "Sure."
        first, then the router's words only if the answer is still not there."""
        if turn.ack_spoken == "":
            quick = QUICK_ACKS[len(self._turns) % len(QUICK_ACKS)]
            audio = self.speech.tts.cached(quick)
            if audio is not None:
                turn.ack_spoken = "quick"
                await self._play(item, quick, audio, quick=True)
            if turn.answer_ready or item.epoch != self._epoch:
                return
        if not item.text:  # the quick acknowledgment alone, said at the end of the turn
            return
        if turn.ack_spoken in ("", "full") or not turn.answer_ready:
            turn.ack_spoken = "full"
            await self._play(item, item.text, item.audio or b"")

    async def _play(self, item: _Speak, text: str, audio: bytes, *,
                    quick: bool = False) -> None:
        """Send ``audio`` in 20 ms frames, ``voice_playout_lead_ms`` ahead of real time;
        a barge-in (a new epoch) stops it at the next frame."""
        if not audio or item.epoch != self._epoch:
            return
        turn = item.turn
        rate = self.speech.tts.sample_rate
        frame_bytes = rate * FRAME_MS // 1000 * 2
        lead_s = self.settings.voice_playout_lead_ms / 1000
        if turn is not self._spoken_turn:  # a new reply: what was heard starts over
            self._spoken_turn, self._spoken = turn, []
        self._playing = item
        self._spoken.append(text)
        now = self.clock()
        if now - self._origin > self._sent_s:  # the line went quiet: restart the clock
            self._origin, self._sent_s = now, 0.0
        self._line_until = self._origin + self._sent_s + len(audio) / 2 / rate
        if turn is not None and not quick and turn.reply_at is None:
            turn.reply_at = self._origin + self._sent_s
        if turn is not None:
            first_answer = item.kind != "ack" and "answer_audio" not in turn.timings
            turn.mark("ack_audio" if item.kind == "ack" else "answer_audio", self.clock)
            turn.mark("first_audio", self.clock)
            if first_answer:
                await self._send_timings(turn)
        for start in range(0, len(audio), frame_bytes):
            if item.epoch != self._epoch:
                break
            await self.output.send_audio(audio[start:start + frame_bytes])
            self._sent_s += min(frame_bytes, len(audio) - start) / 2 / rate
            ahead = self._sent_s - (self.clock() - self._origin)
            if ahead > lead_s:
                await asyncio.sleep(ahead - lead_s)
        self._last_activity = self.clock()
        if self._playing is item:
            self._playing = None

    async def _synthesize_ahead(self) -> None:
        """Text → speech, one piece ahead of the speaker (backpressure from its queue)."""
        while True:
            item = await self._speak_queue.get()
            if item.epoch != self._epoch:
                if item.early is not None:
                    item.early.cancel()
                continue
            turn = item.turn
            if (item.kind == "ack" and turn is not None and turn.answer_ready
                    and turn.ack_spoken in ("", "quick")):
                item.audio = b""  # the answer is there: this part will not be said
            self._synthesizing = item
            try:
                if item.audio is None and item.early is not None:
                    item.audio = await item.early
                if item.audio is None and item.kind == "ack" and turn is not None:
                    item.audio = await self._synthesize_ack(item, turn)
                if item.audio is None:
                    item.audio = await self._synthesize(item.text, urgent=item.urgent)
            finally:
                self._synthesizing = None
            if item.epoch == self._epoch:
                await self._audio_queue.put(item)
                self._waiting_s = len(item.audio) / 2 / self.speech.tts.sample_rate

    async def _synthesize_ack(self, item: _Speak, turn: _TurnAudio) -> bytes:
        """The uncached part of an acknowledgment ("the returns policy for you."), only
        while it may still be said: it is needed only if the answer is not there once the
        quick "Sure." has played, and the answer's first words queue behind it in this
        call (and, on a busy gateway, other callers' first words behind it on the TTS
        threads). So wait a moment for the answer first, and drop the synthesis as soon
        as the answer arrives."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(turn.answer_event.wait(), ACK_GRACE_S)
        if turn.answer_ready:
            return b""
        synthesis = asyncio.ensure_future(self._synthesize(item.text, urgent=item.urgent))
        answered = asyncio.ensure_future(turn.answer_event.wait())
        try:
            await asyncio.wait({synthesis, answered}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The answer came first: a synthesis not started yet never starts.
            for task in (synthesis, answered):
                task.cancel()
            await asyncio.gather(synthesis, answered, return_exceptions=True)
        return synthesis.result() if not synthesis.cancelled() else b""

    async def _send_timings(self, turn: _TurnAudio) -> None:
        await self.output.send_event({"type": "voice_timings", "turn_id": turn.turn_id,
                                      "acknowledgment": turn.ack_spoken or None,
                                      "ms_after_speech_end": dict(turn.timings)})
