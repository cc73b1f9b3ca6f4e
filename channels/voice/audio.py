"""PCM helpers: 16-bit little-endian mono in and out, float32 in between, and resampling.

Callers' audio arrives as ``pcm_s16le`` (16 kHz, or 8 kHz from phone lines); the speech
models work on float32 at 16 kHz; synthesized speech leaves as ``pcm_s16le`` at the voice's
own rate. :class:`StreamResampler` converts between any two rates chunk by chunk
(windowed-sinc interpolation, state carried across chunks), with numpy only.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["StreamResampler", "float_to_pcm16", "pcm16_to_float", "resample"]

_HALF_TAPS = 16  # input samples on each side of an output sample


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian int16 bytes → float32 in [-1, 1]."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] → little-endian int16 bytes (clipped)."""
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


class StreamResampler:
    """Resample a stream from ``src_rate`` to ``dst_rate`` (any two rates), chunk by chunk."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._step = src_rate / dst_rate  # input samples per output sample
        self._cutoff = min(1.0, dst_rate / src_rate)  # of the input's Nyquist
        # Input kept from earlier chunks, and the next output's position in it.
        self._history = np.zeros(_HALF_TAPS, dtype=np.float32)
        self._pos = float(_HALF_TAPS)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns every output sample it makes computable."""
        if self.src_rate == self.dst_rate:
            return samples.astype(np.float32, copy=False)
        buf = np.concatenate([self._history, samples.astype(np.float32, copy=False)])
        last = len(buf) - _HALF_TAPS  # an output needs _HALF_TAPS samples after it
        count = 0 if last <= self._pos else math.ceil((last - self._pos) / self._step)
        positions = self._pos + np.arange(count) * self._step
        out = self._interpolate(buf, positions)
        self._pos += count * self._step
        keep_from = max(0, int(math.floor(self._pos)) - _HALF_TAPS)
        self._history = buf[keep_from:]
        self._pos -= keep_from
        return out

    def _interpolate(self, buf: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if len(positions) == 0:
            return np.zeros(0, dtype=np.float32)
        base = np.floor(positions).astype(np.int64)
        offsets = np.arange(-_HALF_TAPS + 1, _HALF_TAPS + 1)
        idx = base[:, None] + offsets[None, :]
        dist = positions[:, None] - idx
        window = 0.5 + 0.5 * np.cos(np.pi * dist / _HALF_TAPS)
        window[np.abs(dist) >= _HALF_TAPS] = 0.0
        kernel = self._cutoff * np.sinc(self._cutoff * dist) * window
        return (buf[np.clip(idx, 0, len(buf) - 1)] * kernel).sum(axis=1).astype(np.float32)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample a whole clip."""
    if src_rate == dst_rate:
        return samples.astype(np.float32, copy=False)
    stream = StreamResampler(src_rate, dst_rate)
    tail = np.zeros(2 * _HALF_TAPS + int(math.ceil(src_rate / dst_rate)), dtype=np.float32)
    out = np.concatenate([stream.push(samples), stream.push(tail)])
    return out[: int(round(len(samples) * dst_rate / src_rate))]
