"""When a caller's turn may end early, and the speech threads' priorities (no models)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from channels.voice.executor import NORMAL, URGENT, PriorityExecutor
from channels.voice.turns import reads_complete
from channels.voice.vad import WINDOW, Pause, TurnDetector, TurnEnded

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "complete"), [
    ("How do I factory reset the hub?", True),
    ("Can I return an opened item?", True),
    ("My hub blinks red.", True),
    ("Who do I talk to?", True),  # a question may end on a preposition
    ("How do I log in?", True),
    ("Yes!", True),
    ("How do I", False),  # no sentence-final punctuation
    ("I bought a hub and.", False),  # Whisper's full stop after a conjunction
    ("I want to return the.", False),
    ("Can I return it because...", False),
    ("So the thing is, um.", False),
    ("I need to talk to.", False),  # a statement does not end on a preposition
    ("", False),
    ("   ", False),
])
def test_a_transcript_reads_complete_only_as_a_whole_sentence(text: str, complete: bool) -> None:
    assert reads_complete(text) is complete


def _detector(probs: list[float]) -> TurnDetector:
    it = iter(probs)
    return TurnDetector(lambda w: next(it), min_speech_ms=64, pause_ms=64,
                        end_silence_ms=256, preroll_ms=64, tail_ms=0)


def _push(detector: TurnDetector, windows: int) -> list:
    return [e for _ in range(windows)
            for e in detector.push(np.zeros(WINDOW, dtype=np.float32))]


def _silence_until_end(detector: TurnDetector, most: int = 20) -> int:
    """Silent windows pushed until the turn ended (``most`` + 1: it did not)."""
    for n in range(1, most + 1):
        if any(isinstance(e, TurnEnded)
               for e in detector.push(np.zeros(WINDOW, dtype=np.float32))):
            return n
    return most + 1


def test_a_turn_judged_complete_ends_after_the_shorter_silence() -> None:
    detector = _detector([0.9] * 10 + [0.0] * 20)
    events = _push(detector, 12)  # 10 voiced windows, then a 2-window pause
    pause = next(e for e in events if isinstance(e, Pause))
    detector.end_after(pause.last_voiced, 128)  # the call read a whole sentence
    # Ended after 4 silent windows (128 ms), not the full 8 (256 ms).
    assert 2 + _silence_until_end(detector) == 4


def test_without_a_judgement_the_turn_waits_for_the_full_silence() -> None:
    detector = _detector([0.9] * 10 + [0.0] * 20)
    _push(detector, 10)
    assert _silence_until_end(detector) == 8


def test_a_shorter_end_is_forgotten_when_the_caller_speaks_on() -> None:
    detector = _detector([0.9] * 10 + [0.0] * 3 + [0.9] * 5 + [0.0] * 20)
    events = _push(detector, 12)
    pause = next(e for e in events if isinstance(e, Pause))
    detector.end_after(pause.last_voiced, 128)
    _push(detector, 6)  # one more silent window, then speech again
    # The new last voiced sample is another: the full 256 ms of silence are waited for.
    assert _silence_until_end(detector) == 8


def test_urgent_work_starts_at_once_while_every_worker_is_busy() -> None:
    executor = PriorityExecutor(1, "test", urgent_lanes=1)
    release = threading.Event()
    try:
        busy = executor.submit(release.wait, 10, priority=NORMAL)
        queued = executor.submit(lambda: "later", priority=NORMAL)
        urgent = executor.submit(lambda: "now", priority=URGENT)
        assert urgent.result(timeout=10) == "now"  # the lane took it; the worker is busy
        assert not queued.done()  # the lane never takes normal work
        release.set()
        assert busy.result(timeout=10) is True and queued.result(timeout=10) == "later"
    finally:
        release.set()
        executor.shutdown()


def test_the_lowest_priority_runs_first_and_shutdown_cancels_the_rest() -> None:
    executor = PriorityExecutor(1, "test")
    release = threading.Event()
    order: list[str] = []
    blocker = executor.submit(release.wait, 10)
    jobs = [executor.submit(order.append, name, priority=p)
            for name, p in (("a", NORMAL), ("b", URGENT), ("c", NORMAL))]
    release.set()
    blocker.result(timeout=10)
    for job in jobs:
        job.result(timeout=10)
    assert order == ["b", "a", "c"]
    # Within a priority, the audio needed first is made first.
    order.clear()
    release.clear()
    blocker = executor.submit(release.wait, 10)
    now = time.monotonic()
    jobs = [executor.submit(order.append, name, deadline=now + due)
            for name, due in (("in 3 s", 3.0), ("in 1 s", 1.0), ("in 2 s", 2.0))]
    release.set()
    for job in [blocker, *jobs]:
        job.result(timeout=10)
    assert order == ["in 1 s", "in 2 s", "in 3 s"]
    release.clear()
    executor.submit(release.wait, 10)
    pending = executor.submit(order.append, "never")
    executor.shutdown()
    release.set()
    assert pending.cancelled()
    assert executor.submit(order.append, "closed").cancelled()
