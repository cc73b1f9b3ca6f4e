"""Voice building blocks without models: resampling, turn detection, sentences, protocol."""

from __future__ import annotations

import numpy as np
import pytest

from channels.voice.audio import StreamResampler, float_to_pcm16, pcm16_to_float, resample
from channels.voice.protocol import VoiceErrorCode, VoiceHello, parse_voice_message
from channels.voice.stt import drop_repeated_words, drop_repeats, normalize_transcript
from channels.voice.tts import SentenceSplitter
from channels.voice.vad import WINDOW, Pause, SpeechStarted, TurnDetector, TurnEnded
from gateway.protocol import Cancel, ErrorCode, ProtocolError

pytestmark = pytest.mark.unit


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize(("src", "dst"), [(8000, 16000), (22050, 16000), (48000, 16000)])
def test_resampling_keeps_a_tone_and_the_duration(src: int, dst: int) -> None:
    x = tone(1.0, src)
    y = resample(x, src, dst)
    assert len(y) == dst
    ref = tone(1.0, dst)
    assert np.abs(y[200:-200] - ref[200:-200]).max() < 0.01


def test_streamed_resampling_equals_whole_clip_resampling() -> None:
    x = tone(0.5, 8000)
    stream = StreamResampler(8000, 16000)
    parts = [stream.push(x[i:i + 137]) for i in range(0, len(x), 137)]  # odd chunk sizes
    joined = np.concatenate(parts)
    whole = resample(x, 8000, 16000)
    assert np.allclose(joined, whole[:len(joined)], atol=1e-5)
    assert len(joined) >= len(whole) - 64


def test_pcm16_round_trip_and_clipping() -> None:
    x = np.array([0.0, 0.5, -0.5, 2.0, -2.0], dtype=np.float32)
    y = pcm16_to_float(float_to_pcm16(x))
    assert np.allclose(y[:3], x[:3], atol=1e-4) and y[3] == pytest.approx(1.0, abs=1e-4)


def _scripted(probabilities: list[float]):
    it = iter(probabilities)
    return lambda window: next(it)


def _feed(detector: TurnDetector, windows: int) -> list:
    events = []
    for _ in range(windows):
        events.extend(detector.push(np.full(WINDOW, 0.1, dtype=np.float32)))
    return events


def test_turn_detector_start_pause_end_and_last_voiced_sample() -> None:
    # 5 silent windows, 10 voiced, then silence: speech starts after 2 voiced windows
    # (64 ms), a pause after 3 silent ones, the end after 250 ms (7 windows).
    probs = [0.0] * 5 + [0.9] * 10 + [0.0] * 20
    detector = TurnDetector(_scripted(probs), min_speech_ms=64, pause_ms=96,
                            end_silence_ms=250, preroll_ms=64, tail_ms=0)
    events = _feed(detector, len(probs))
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, Pause, TurnEnded]
    start, pause, end = events
    assert start.at_sample == 5 * WINDOW
    assert end.last_voiced == 15 * WINDOW == pause.last_voiced
    # pre-roll (2 windows) + 10 voiced windows, no tail
    assert len(end.audio) == 12 * WINDOW
    assert not detector.speaking


def test_a_click_is_not_speech_and_a_short_pause_does_not_end_the_turn() -> None:
    probs = [0.9] + [0.0] * 5 + [0.9] * 4 + [0.0] * 4 + [0.9] * 4 + [0.0] * 10
    detector = TurnDetector(_scripted(probs), min_speech_ms=64, pause_ms=96,
                            end_silence_ms=250)
    kinds = [type(e) for e in _feed(detector, len(probs))]
    assert kinds == [SpeechStarted, Pause, Pause, TurnEnded]


def test_turn_detector_cuts_the_longest_turn() -> None:
    probs = [0.9] * 40
    detector = TurnDetector(_scripted(probs), max_utterance_s=1.0)
    events = _feed(detector, len(probs))
    ends = [e for e in events if isinstance(e, TurnEnded)]
    assert ends and ends[0].truncated


def test_any_chunk_size_is_scored_window_by_window() -> None:
    seen: list[int] = []
    detector = TurnDetector(lambda w: seen.append(len(w)) or 0.0)
    for size in (1, 100, 511, 513, 1000):
        detector.push(np.zeros(size, dtype=np.float32))
    assert set(seen) == {WINDOW} and len(seen) == (1 + 100 + 511 + 513 + 1000) // WINDOW


def test_sentences_are_cut_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hold the reset button for 15 sec") == []
    assert splitter.push("onds. Then wait 5 minutes, or until the LED flashes. The LED") == [
        "Hold the reset button for 15 seconds.", "Then wait 5 minutes, or until the LED flashes."]
    assert splitter.flush() == "The LED"
    assert splitter.push("Version 2.5 is out. ") == ["Version 2.5 is out."]


def test_a_long_first_sentence_is_spoken_from_its_first_clause() -> None:
    splitter = SentenceSplitter()
    assert splitter.push(" If the hub does not come back online, restart it and wait. "
                         "Then more, and more. ") == [
        "If the hub does not come back online,", "restart it and wait.", "Then more, and more."]


def test_a_long_first_sentence_without_a_comma_is_cut_before_a_phrase() -> None:
    splitter = SentenceSplitter()
    assert splitter.push(" Opened items can be returned as long as all parts are present, "
                         "including the power adapter, and the box. Then more, and more. ") == [
        "Opened items can be returned",
        "as long as all parts are present, including the power adapter, and the box.",
        "Then more, and more."]
    # Streamed word by word, the cut waits until the first piece is known to be long...
    splitter, pieces = SentenceSplitter(), []
    words = "Press and hold the reset button on the back of the hub for 15 seconds."
    for word in words.split(" "):
        pieces += splitter.push(word + " ")
    assert pieces == ["Press and hold the reset button",
                      "on the back of the hub for 15 seconds."]
    # ... and a short first sentence is never cut.
    splitter, pieces = SentenceSplitter(), []
    words = "Your order ships in two days. Thanks for waiting on us."
    for word in words.split(" "):
        pieces += splitter.push(word + " ")
    assert pieces == ["Your order ships in two days.", "Thanks for waiting on us."]


def test_a_long_first_sentence_is_cut_before_its_verb_or_after_a_word_that_ends_a_piece(
        ) -> None:
    splitter = SentenceSplitter()
    assert splitter.push(" No, a 10% restocking fee is deducted from the refund of opened "
                         "items. Then more, and more. ") == [
        "No, a 10% restocking fee", "is deducted from the refund of opened items.",
        "Then more, and more."]
    # No phrase opens in the first piece's length: it ends on a word that can end it
    # (not "our", not a number that names what follows).
    splitter = SentenceSplitter()
    assert splitter.push("Customers everywhere appreciate our wonderful multilingual "
                         "documentation portal today. ") == [
        "Customers everywhere appreciate", "our wonderful multilingual documentation "
        "portal today."]
    splitter = SentenceSplitter()
    assert splitter.push("Premium members receive 2 complimentary 5 litre refills "
                         "monthly. ") == [
        "Premium members receive 2 complimentary", "5 litre refills monthly."]


def test_decoding_loops_are_cut_and_transcripts_compare_by_words() -> None:
    assert drop_repeats([1, 2, 3, 1, 2, 3, 1]) == [1, 2, 3]
    assert drop_repeats([1, 2, 3, 4]) == [1, 2, 3, 4]
    assert drop_repeats([5, 5, 5, 5]) == [5, 5, 5, 5]  # periods under 3 tokens stay
    assert drop_repeated_words("Can I return and open item? Can I return and open item") == (
        "Can I return and open item?")
    assert drop_repeated_words("No, no, I said no.") == "No, no, I said no."
    assert normalize_transcript(" Can I return, an opened item?") == "can i return an opened item"


def test_voice_hello_announces_the_audio_and_bad_rates_are_refused() -> None:
    hello = parse_voice_message('{"type": "hello", "sample_rate": 8000}')
    assert isinstance(hello, VoiceHello) and hello.sample_rate == 8000
    assert hello.channel == "voice"
    with pytest.raises(ProtocolError) as err:
        parse_voice_message('{"type": "hello", "sample_rate": 96000}')
    assert err.value.code == VoiceErrorCode.unsupported_audio
    with pytest.raises(ProtocolError) as err:
        parse_voice_message('{"type": "hello", "encoding": "opus"}')
    assert err.value.code == VoiceErrorCode.unsupported_audio
    assert isinstance(parse_voice_message('{"type": "cancel"}'), Cancel)
    with pytest.raises(ProtocolError) as err:
        parse_voice_message("not json")
    assert err.value.code == ErrorCode.invalid_json
