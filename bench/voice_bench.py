"""Voice: word error rate, and the latency of a spoken reply, stage by stage.

1. **WER** of faster-whisper tiny.en on the two public recordings (16 kHz ``jfk.flac``;
   8 kHz telephone speech, resampled), with the encoder window sized to the utterance (as
   calls decode) and with Whisper's fixed 30 s window, whole and cut into utterances by
   the VAD (as a call hears them).
2. **Latency**: ``duet serve`` in its own process (sample knowledge base, ingest worker
   inside). Spoken questions are streamed into ``/v1/voice`` in real time; from the last
   voiced sample sent, the client times the first audio byte of the reply and the first
   audio of the grounded answer (the server's ``voice_timings`` event comes with it), and
   the server reports its stages (end of turn, final transcript, submitted, ack text and
   audio, answer text and audio). One caller on an idle gateway, one caller while the
   ingest worker applies a stream of documents, and 10 callers at once under the same
   ingest load. Each question is the first of its own call (so it is acknowledged, never
   a prefetch hit); the call hangs up once the answer starts playing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.chat_bench import gateway_process
from bench.common import save, summary
from bench.ingest_bench import _doc
from tests.voice_client import AUDIO_DIR, VoiceClient, read_wav

QUESTIONS = ["q_return", "q_hub_reset"]
STAGES = ["end_of_turn", "final_transcript", "submitted", "ack_text", "ack_audio",
          "answer_text", "answer_audio"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return round(row[-1] / max(1, len(ref)), 4)


def _load(name: str) -> tuple[np.ndarray, str]:
    from faster_whisper import decode_audio

    from channels.voice.audio import resample

    reference = json.loads((AUDIO_DIR / f"{Path(name).stem}.json").read_text())
    text = reference[0]["transcription"]
    if name.endswith(".flac"):
        return decode_audio(str(AUDIO_DIR / name), sampling_rate=16000), text
    pcm, rate = read_wav(AUDIO_DIR / name)
    return resample(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, rate, 16000), text


async def word_error_rates() -> dict[str, Any]:
    from channels.voice.stt import WhisperSTT
    from channels.voice.vad import SileroVad, TurnDetector, TurnEnded

    out: dict[str, Any] = {}
    vad = SileroVad()
    engines = {"sized_window": WhisperSTT(short_window=True),
               "fixed_30s_window": WhisperSTT(short_window=False)}
    for name in ("jfk.flac", "OSR_us_000_0034_8k.wav"):
        audio, reference = _load(name)
        detector = TurnDetector(vad.scorer(), end_silence_ms=500)
        utterances = [e.audio for e in detector.push(np.concatenate(
            [audio, np.zeros(16000, np.float32)])) if isinstance(e, TurnEnded)]
        entry: dict[str, Any] = {"seconds": round(len(audio) / 16000, 1),
                                 "utterances": len(utterances)}
        for label, engine in engines.items():
            started = time.perf_counter()
            whole = await engine.transcribe(audio)
            whole_ms = (time.perf_counter() - started) * 1000
            parts, part_ms = [], []
            for utterance in utterances:
                started = time.perf_counter()
                parts.append(await engine.transcribe(utterance))
                part_ms.append((time.perf_counter() - started) * 1000)
            entry[label] = {
                "wer_whole": wer(reference, whole), "wer_utterances": wer(reference, " ".join(parts)),
                "decode_ms_whole": round(whole_ms, 1),
                "decode_ms_per_utterance": summary(part_ms),
                "hypothesis_utterances": " ".join(parts)}
        out[name] = entry
    for engine in engines.values():
        engine.close()
    return out


async def _turns(ws_url: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` calls of one spoken question each (the first question of a call is never a
    prefetch hit, so it is acknowledged); each turn's client and server figures."""
    clips = {q: read_wav(AUDIO_DIR / f"{q}.wav") for q in QUESTIONS}
    results = []
    for _ in range(n):
        pcm, rate = clips[rng.choice(QUESTIONS)]
        client = await VoiceClient.connect(ws_url)
        try:
            await client.wait_type("session", timeout_s=120)
            await client.silence(0.3)
            seen_events, seen_audio = len(client.events), len(client.audio)
            await client.stream(pcm, rate)
            speech_end = client.speech_end
            try:
                timings = await client.wait_for(lambda e: e["type"] == "voice_timings",
                                                timeout_s=60, since=seen_events)
            except AssertionError:
                results.append({"error": "no reply"})
                continue
            first_audio = next((at for at, _ in client.audio[seen_audio:]), None)
            results.append({
                "first_audio_ms": (round((first_audio - speech_end) * 1000, 1)
                                   if first_audio else None),
                "answer_audio_ms": round((timings["_at"] - speech_end) * 1000, 1),
                "acknowledged": any(e["type"] == "delta" and e["source"] == "ack"
                                    for e in client.events[seen_events:]),
                "server": timings["ms_after_speech_end"]})
        finally:
            await client.close()
    return results


def _report(turns: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in turns if "error" not in t]
    first = [t["first_audio_ms"] for t in ok if t["first_audio_ms"] is not None]
    answer = [t["answer_audio_ms"] for t in ok if "answer_audio" in t["server"]]
    stages = {s: summary([t["server"][s] for t in ok if s in t["server"]])
              for s in STAGES if any(s in t["server"] for t in ok)}
    return {"turns": len(turns), "failed": len(turns) - len(ok),
            "acknowledged": sum(1 for t in ok if t["acknowledged"]),
            "speech_end_to_first_audio_ms (client)": summary(first) if first else None,
            "speech_end_to_answer_audio_ms (client)": summary(answer) if answer else None,
            "server_stages_ms_after_speech_end (p50 etc.)": stages}


async def _ingest_load(base: str, stop: asyncio.Event, lags: list[float]) -> None:
    """Documents posted back to back (each waited for): the worker never idles."""
    rng = random.Random(5)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        i = 0
        while not stop.is_set():
            body = _doc(5000 + i, 270, rng).model_dump(mode="json")
            res = await http.post("/v1/documents", params={"wait": "true"}, json=body)
            if res.status_code == 200:
                lags.append(res.json()["lag_ms"])
            i += 1


async def _callers(ws_url: str, callers: int, turns: int) -> list[dict[str, Any]]:
    rng = random.Random(11)

    async def one(delay: float, seed: float) -> list[dict[str, Any]]:
        await asyncio.sleep(delay)  # callers do not all speak on the same beat
        return await _turns(ws_url, turns, random.Random(seed))

    per = await asyncio.gather(*(one(0.3 * i, rng.random()) for i in range(callers)))
    return [t for turns_ in per for t in turns_]


async def main() -> None:
    started = time.perf_counter()
    rates = await word_error_rates()
    save("voice_wer", rates)
    env = {"DUET_VOICE_PRELOAD": "true", "DUET_CHAT_RATE_BURST": "1000",
           "DUET_CHAT_RATE_PER_S": "1000", "DUET_VOICE_MAX_CALLS": "64"}
    load_at_start = os.getloadavg()[0]
    async with gateway_process(**env) as gw:
        await _turns(gw.ws_url, 2, random.Random(1))  # warm-up, not reported
        idle = await _turns(gw.ws_url, 10, random.Random(2))
        stop = asyncio.Event()
        lags: list[float] = []
        load = asyncio.create_task(_ingest_load(gw.base_url, stop, lags))
        await asyncio.sleep(2.0)
        loaded = await _turns(gw.ws_url, 10, random.Random(3))
        many = await _callers(gw.ws_url, 10, 3)
        stop.set()
        await load
    save("voice_latency", {
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": load_at_start,
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "targets_ms_p50": {"first_audio": 350, "answer_audio": 900},
        "1_caller_idle": _report(idle),
        "1_caller_under_ingest_load": _report(loaded),
        "10_callers_under_ingest_load": _report(many),
        "ingest_lag_ms_during_calls": summary(lags) if lags else None,
        "seconds": round(time.perf_counter() - started, 1),
    })
