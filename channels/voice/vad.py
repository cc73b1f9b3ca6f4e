"""Voice activity and the end of a caller's turn.

:class:`SileroVad` holds the Silero VAD ONNX model shipped in ``livekit-plugins-silero``
(loaded offline from the wheel; one ONNX session shared by every call, bounded to one
thread). Each call gets a :class:`TurnDetector`: it takes 16 kHz float32 audio in any chunk
size, scores 32 ms windows, and reports what the call needs to know:

- :class:`SpeechStarted` once ``min_speech_ms`` of speech is heard (barge-in);
- :class:`Pause` when the caller has been silent ``pause_ms`` (a good moment to decode);
- :class:`TurnEnded` after ``end_silence_ms`` of silence, with the utterance's audio
  (a short pre-roll, the speech, a short tail) and where its last voiced sample was —
  or sooner, after the silence given to :meth:`TurnDetector.end_after`, when the call
  has judged the utterance up to that sample complete (and no speech came since).

The detector is pure bookkeeping over probabilities, so it is unit-tested with any scorer.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Pause", "SileroVad", "SpeechStarted", "TurnDetector", "TurnEnded", "VadEvent",
           "silero_model_path"]

SAMPLE_RATE = 16000
WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)
WINDOW_MS = WINDOW * 1000 // SAMPLE_RATE
_CONTEXT = 64  # samples of the previous window the model sees again
SOUND_LEVEL = 10 ** (-30 / 20)  # of the utterance's peak: still the sound of speech


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started speaking (enough speech to count, not a click)."""

    #: Sample index (since the call began) where the speech started.
    at_sample: int


@dataclass(frozen=True)
class Pause:
    """The caller stopped for ``pause_ms``: the audio so far is likely the whole turn."""

    audio: np.ndarray
    #: Sample index of the last voiced sample.
    last_voiced: int
    #: Sample index of the last sample within 30 dB of the utterance's peak: where the
    #: sound of the speech ended (the VAD's voiced windows run on past it).
    last_sound: int = 0


@dataclass(frozen=True)
class TurnEnded:
    """The caller's turn is over (``end_silence_ms`` of silence, or the longest turn)."""

    audio: np.ndarray
    #: Sample index (since the call began) of the last voiced sample.
    last_voiced: int
    #: Whether the turn was cut at ``max_utterance_s`` rather than ended by silence.
    truncated: bool = False
    #: As :attr:`Pause.last_sound`.
    last_sound: int = 0


VadEvent = SpeechStarted | Pause | TurnEnded


def silero_model_path() -> Path:
    """The Silero VAD ONNX file inside the ``livekit-plugins-silero`` wheel.

    Found without importing the plugin package (importing it registers a LiveKit plugin,
    which only the main thread may do, and pulls in the whole agents framework).
    """
    spec = importlib.util.find_spec("livekit.plugins.silero")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("livekit-plugins-silero is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "silero_vad.onnx"


class SileroVad:
    """The Silero VAD model; :meth:`scorer` gives each call its own recurrent state."""

    def __init__(self, model: Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session = onnxruntime.InferenceSession(
            str(model or silero_model_path()), sess_options=options,
            providers=["CPUExecutionProvider"])

    def scorer(self) -> Callable[[np.ndarray], float]:
        """A per-call scorer: 512 samples of 16 kHz float32 → speech probability."""
        session = self._session
        context = np.zeros((1, _CONTEXT), dtype=np.float32)
        state = np.zeros((2, 1, 128), dtype=np.float32)
        rate = np.array(SAMPLE_RATE, dtype=np.int64)
        lock = threading.Lock()

        def score(window: np.ndarray) -> float:
            nonlocal context, state
            with lock:
                x = np.concatenate([context, window.reshape(1, -1).astype(np.float32)], axis=1)
                out, state = session.run(None, {"input": x, "state": state, "sr": rate})
                context = x[:, -_CONTEXT:]
                return float(out.item())

        return score


class TurnDetector:
    """Speech start, pauses and turn ends from a stream of 16 kHz float32 audio.

    Not thread-safe: one call feeds it from one place at a time.
    """

    def __init__(self, score: Callable[[np.ndarray], float], *, threshold: float = 0.5,
                 min_speech_ms: int = 64, pause_ms: int = 96, end_silence_ms: int = 250,
                 preroll_ms: int = 200, tail_ms: int = 64, max_utterance_s: float = 20.0
                 ) -> None:
        self._score = score
        self.threshold = threshold
        self._deactivate = max(0.05, threshold - 0.15)
        self._min_speech_windows = max(1, min_speech_ms // WINDOW_MS)
        self._pause_windows = max(1, pause_ms // WINDOW_MS)
        self._end_windows = max(self._pause_windows + 1, end_silence_ms // WINDOW_MS)
        self._tail = tail_ms * SAMPLE_RATE // 1000
        self._max_samples = int(max_utterance_s * SAMPLE_RATE)
        self._pending = np.zeros(0, dtype=np.float32)
        # Pre-roll before the speech, plus the voiced windows that confirm it.
        self._preroll: deque[np.ndarray] = deque(
            maxlen=max(1, preroll_ms // WINDOW_MS) + self._min_speech_windows)
        self._utterance: list[np.ndarray] = []
        self._utterance_start = 0
        self.samples_seen = 0
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
        self._last_voiced = 0
        self._paused = False
        # (last voiced sample, silent windows): a shorter end for that utterance only.
        self._early_end: tuple[int, int] | None = None
        self.probability = 0.0

    @property
    def utterance_samples(self) -> int:
        """Samples in the utterance being collected (0 outside speech)."""
        return sum(len(w) for w in self._utterance)

    def utterance(self) -> np.ndarray:
        """The audio of the utterance so far (pre-roll included)."""
        if not self._utterance:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._utterance)

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Score every complete window in ``samples`` (plus what was left over before)."""
        events: list[VadEvent] = []
        buf = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n_windows = len(buf) // WINDOW
        for i in range(n_windows):
            window = buf[i * WINDOW:(i + 1) * WINDOW]
            events.extend(self._window(window, self._score(window)))
        self._pending = buf[n_windows * WINDOW:].copy()
        return events

    def end_after(self, last_voiced: int, silence_ms: int) -> None:
        """End the utterance whose last voiced sample is ``last_voiced`` after only
        ``silence_ms`` of silence (at least the pause), if no speech comes first.

        The call says this once the utterance's transcript reads as complete. Safe to
        call from another thread than :meth:`push`'s: one tuple is replaced, and a
        stale one (speech came since) never applies.
        """
        windows = max(self._pause_windows + 1, -(-silence_ms // WINDOW_MS))
        self._early_end = (last_voiced, windows)

    def reset(self) -> None:
        """Forget the utterance in progress (the call's state is otherwise kept)."""
        self._utterance = []
        self.speaking = False
        self._voiced_run = self._silent_run = 0
        self._paused = False
        self._early_end = None

    def _window(self, window: np.ndarray, p: float) -> list[VadEvent]:
        self.probability = p
        start = self.samples_seen
        self.samples_seen += len(window)
        events: list[VadEvent] = []
        voiced = p >= self.threshold or (self.speaking and p >= self._deactivate
                                         and self._silent_run == 0)
        if not self.speaking:
            self._preroll.append(window)
            if p >= self.threshold:
                self._voiced_run += 1
                if self._voiced_run >= self._min_speech_windows:
                    self.speaking = True
                    self._utterance = list(self._preroll)
                    self._utterance_start = self.samples_seen - self.utterance_samples
                    self._preroll.clear()
                    self._last_voiced = self.samples_seen
                    self._silent_run = 0
                    self._paused = False
                    events.append(SpeechStarted(at_sample=start - (self._voiced_run - 1) * WINDOW))
            else:
                self._voiced_run = 0
            return events
        self._utterance.append(window)
        if voiced:
            self._silent_run = 0
            self._last_voiced = self.samples_seen
            self._paused = False
        else:
            self._silent_run += 1
        end_windows = self._end_windows
        early = self._early_end
        if early is not None and early[0] == self._last_voiced:
            end_windows = min(end_windows, early[1])
        if self._silent_run >= end_windows:
            events.append(self._end(truncated=False))
        elif self._silent_run >= self._pause_windows and not self._paused:
            self._paused = True
            audio = self._voiced_audio()
            events.append(Pause(audio=audio, last_voiced=self._last_voiced,
                                last_sound=self._last_sound(audio)))
        elif self.utterance_samples >= self._max_samples:
            events.append(self._end(truncated=True))
        return events

    def _voiced_audio(self) -> np.ndarray:
        """The utterance up to a short tail after its last voiced sample."""
        audio = self.utterance()
        keep = self._last_voiced - self._utterance_start + self._tail
        return audio[: max(0, min(len(audio), keep))]

    def _last_sound(self, audio: np.ndarray) -> int:
        """The sample index where the utterance's sound ends: its last sample within
        30 dB of its peak, at most the last voiced one. Silero keeps a fading word voiced
        for 2–3 windows (70–110 ms on the test questions) after its sound is gone, so
        latency counted from ``last_voiced`` would understate what the caller waits."""
        voiced = audio[: max(0, self._last_voiced - self._utterance_start)]
        if not len(voiced):
            return self._last_voiced
        loud = np.nonzero(np.abs(voiced) >= SOUND_LEVEL * float(np.abs(voiced).max()))[0]
        return self._utterance_start + int(loud[-1]) + 1 if len(loud) else self._last_voiced

    def _end(self, *, truncated: bool) -> TurnEnded:
        audio = self._voiced_audio()
        event = TurnEnded(audio=audio, last_voiced=self._last_voiced, truncated=truncated,
                          last_sound=self._last_sound(audio))
        self.speaking = False
        self._utterance = []
        self._voiced_run = self._silent_run = 0
        self._paused = False
        self._early_end = None
        return event
