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
   ingest worker applies a stream of documents, and 10 callers under the same ingest
   load, two ways: **simultaneous** (the worst case: in each round the 10 callers' last
   voiced samples are sent in the same instant) and **staggered** (each caller thinks a
   random 0.5–4 s before each question, as real callers do). Each question is the first
   of its own call (so it is acknowledged, never a prefetch hit); the call hangs up once
   the answer starts playing.

   The origin is the moment the client sends the frame holding the clip's last sample
   louder than -34 dBFS (the issue's "last voiced sample"); the server's stages count
   from the VAD's last voiced 32 ms window, which ends earlier on a fading word
   (``speech_end_definitions`` gives the gap per clip). "First audio" is the first
   binary frame received. Speech arrives up to ``voice_playout_lead_ms`` ahead of real
   time, so the answer's first frame can arrive while the quick "Sure." is still
   playing: ``answer_heard`` is when a player that starts at the first frame and plays
   back to back would start the answer.
3. **CPU per stage** (one thread each, nothing else in this process): VAD per second of
   audio, the final decode of each question, synthesis of each answer's first clause
   and whole answer, and the gateway process's CPU seconds per turn — the arithmetic of
   what 10 simultaneous turn ends cost on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from tests.voice_client import AUDIO_DIR, VoiceClient, last_voiced_s, read_wav

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


def _clips() -> dict[str, tuple[bytes, int]]:
    return {q: read_wav(AUDIO_DIR / f"{q}.wav") for q in QUESTIONS}


def _heard_at(audio: list[tuple[float, bytes]], answer_at: float, rate: int = 22050
              ) -> float | None:
    """When a player that starts at the first frame and plays frames back to back starts
    the first frame that arrived at or after ``answer_at`` (the answer's)."""
    cursor = 0.0
    for at, chunk in audio:
        start = max(cursor, at)
        if at >= answer_at:
            return start
        cursor = start + len(chunk) / 2 / rate
    return None


async def _one_turn(ws_url: str, pcm: bytes, rate: int, *,
                    ready: Any = None) -> dict[str, Any]:
    """One call of one spoken question; its client and server figures. ``ready``: awaited
    after the call is open, before the question (to line callers up)."""
    client = await VoiceClient.connect(ws_url)
    try:
        await client.wait_type("session", timeout_s=120)
        await client.silence(0.3)
        if ready is not None:
            await ready()
        seen_events, seen_audio = len(client.events), len(client.audio)
        await client.stream(pcm, rate)
        speech_end = client.speech_end
        try:
            timings = await client.wait_for(lambda e: e["type"] == "voice_timings",
                                            timeout_s=60, since=seen_events)
        except AssertionError:
            return {"error": "no reply"}
        with contextlib.suppress(TimeoutError):  # the answer's first frame follows the event
            await client.wait_audio(1, after=timings["_at"], timeout_s=10)
        audio = client.audio[seen_audio:]
        first_audio = audio[0][0] if audio else None
        heard = _heard_at(audio, timings["_at"])
        return {
            "first_audio_ms": (round((first_audio - speech_end) * 1000, 1)
                               if first_audio else None),
            "answer_audio_ms": round((timings["_at"] - speech_end) * 1000, 1),
            "answer_heard_ms": round((heard - speech_end) * 1000, 1) if heard else None,
            "acknowledged": any(e["type"] == "delta" and e["source"] == "ack"
                                for e in client.events[seen_events:]),
            "server": timings["ms_after_speech_end"]}
    finally:
        await client.close()


async def _turns(ws_url: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` calls of one spoken question each, one after the other (the first question
    of a call is never a prefetch hit, so it is acknowledged)."""
    clips = _clips()
    return [await _one_turn(ws_url, *clips[rng.choice(QUESTIONS)]) for _ in range(n)]


def _report(turns: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in turns if "error" not in t]
    first = [t["first_audio_ms"] for t in ok if t["first_audio_ms"] is not None]
    answer = [t["answer_audio_ms"] for t in ok if "answer_audio" in t["server"]]
    heard = [t["answer_heard_ms"] for t in ok
             if "answer_audio" in t["server"] and t["answer_heard_ms"] is not None]
    stages = {s: summary([t["server"][s] for t in ok if s in t["server"]])
              for s in STAGES if any(s in t["server"] for t in ok)}
    return {"turns": len(turns), "failed": len(turns) - len(ok),
            "acknowledged": sum(1 for t in ok if t["acknowledged"]),
            "speech_end_to_first_audio_ms (client)": summary(first) if first else None,
            "speech_end_to_answer_audio_ms (client)": summary(answer) if answer else None,
            "speech_end_to_answer_heard_ms (client playout)": summary(heard) if heard else None,
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


async def _simultaneous(ws_url: str, callers: int, rounds: int) -> list[dict[str, Any]]:
    """The worst case: in each round every caller opens a call, and all their questions
    are streamed so that their last voiced samples are sent in the same instant."""
    clips = _clips()
    rng = random.Random(11)
    out: list[dict[str, Any]] = []
    for _ in range(rounds):
        picks = [clips[rng.choice(QUESTIONS)] for _ in range(callers)]
        ends = [last_voiced_s(pcm, rate) for pcm, rate in picks]
        opened = asyncio.Barrier(callers)

        def ready(lead_s: float, opened: asyncio.Barrier = opened) -> Any:
            async def wait() -> None:
                await opened.wait()
                await asyncio.sleep(lead_s)  # the longer question starts first
            return wait

        out += await asyncio.gather(*(
            _one_turn(ws_url, pcm, rate, ready=ready(max(ends) - end))
            for (pcm, rate), end in zip(picks, ends, strict=True)))
    return out


async def _staggered(ws_url: str, callers: int, turns: int) -> list[dict[str, Any]]:
    """Real callers do not stop talking in the same 10 ms: each caller thinks a random
    0.5–4 s before each question."""
    clips = _clips()
    rng = random.Random(13)

    async def one(seed: float) -> list[dict[str, Any]]:
        mine = random.Random(seed)
        results = []
        for _ in range(turns):
            await asyncio.sleep(mine.uniform(0.5, 4.0))
            results.append(await _one_turn(ws_url, *clips[mine.choice(QUESTIONS)]))
        return results

    per = await asyncio.gather(*(one(rng.random()) for _ in range(callers)))
    return [t for turns_ in per for t in turns_]


def _speech_end_definitions() -> dict[str, Any]:
    """Where each question's speech ends: the last sample over -34 dBFS (the client's
    origin) and the end of the VAD's last voiced window (the server's)."""
    from channels.voice.vad import SileroVad, TurnDetector, TurnEnded

    vad = SileroVad()
    out = {}
    for name, (pcm, rate) in _clips().items():
        samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
        detector = TurnDetector(vad.scorer())
        ends = [e for e in detector.push(np.concatenate([samples, np.zeros(16000, np.float32)]))
                if isinstance(e, TurnEnded)]
        amplitude_s = last_voiced_s(pcm, rate)
        vad_s = ends[-1].last_voiced / 16000 if ends else None
        out[name] = {"last_sample_over_-34dBFS_s": round(amplitude_s, 3),
                     "vad_last_voiced_window_end_s": round(vad_s, 3) if vad_s else None,
                     "gap_ms": round((amplitude_s - vad_s) * 1000, 1) if vad_s else None}
    return out


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Answers to the two questions from the sample knowledge base (sentences of
#: configs/sample_kb/returns-policy.md and hub-reset.md), for the synthesis figures.
ANSWERS = {
    "q_return": "Opened items can also be returned as long as all parts are present, "
                "including the power adapter, mounting hardware, quick-start guide and the "
                "original box. A 10% restocking fee is deducted from the refund for opened "
                "items that are not defective.",
    "q_hub_reset": "Press and hold the reset button on the back with a paperclip for 15 "
                   "seconds, until the LED flashes red 3 times, then release it. The factory "
                   "reset takes about 5 minutes; do not unplug the hub during this time.",
}


async def cpu_per_stage() -> dict[str, Any]:
    """CPU milliseconds of each stage of a turn, one thread each, nothing else running
    in this process (the stages' wall time on an idle core)."""
    from channels.voice.speech import trim_silence
    from channels.voice.stt import WhisperSTT
    from channels.voice.tts import PiperTTS, SentenceSplitter
    from channels.voice.vad import SileroVad

    def cpu_ms(fn: Any) -> float:
        started = time.process_time()
        fn()
        return round((time.process_time() - started) * 1000, 1)

    def seconds(tts: PiperTTS, text: str) -> float:
        return sum(len(a) for a in tts._synthesize(text)) / tts.sample_rate

    out: dict[str, Any] = {}
    score = SileroVad().scorer()
    second = np.zeros(16000, np.float32)
    out["vad_per_s_of_audio_ms"] = cpu_ms(
        lambda: [score(second[i:i + 512]) for i in range(0, 16000 - 511, 512)])
    stt = WhisperSTT(urgent_lanes=0)
    tts = PiperTTS(urgent_lanes=0)
    try:
        for name, (pcm, _rate) in _clips().items():
            audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
            stt._transcribe(audio)  # warm
            out[f"stt_final_decode_{name}_ms"] = cpu_ms(lambda a=audio: stt._transcribe(a))
        for name, text in ANSWERS.items():
            splitter = SentenceSplitter()
            first = (splitter.push(text) or [splitter.flush()])[0]
            out[f"tts_first_clause_{name}_audio_s"] = round(seconds(tts, first), 2)  # warms
            out[f"tts_first_clause_{name}_ms"] = cpu_ms(lambda t=first: list(tts._synthesize(t)))
            whole = cpu_ms(lambda t=text: list(tts._synthesize(t)))
            out[f"tts_whole_answer_{name}_ms"] = whole
            out[f"tts_real_time_factor_{name}"] = round(whole / 1000 / seconds(tts, text), 3)
        quick = trim_silence(b"".join(a.astype("<i2").tobytes()
                                      for a in tts._synthesize("Sure.")), keep_ms=80)
        out["quick_ack_audio_s"] = round(len(quick) / 2 / tts.sample_rate, 2)
    finally:
        stt.close()
        tts.close()
    return out


async def main() -> None:
    started = time.perf_counter()
    quick = os.environ.get("DUET_BENCH_QUICK") == "1"  # a smoke run: fewer turns, no WER
    if not quick:
        save("voice_wer", await word_error_rates())
    env = {"DUET_VOICE_PRELOAD": "true", "DUET_CHAT_RATE_BURST": "1000",
           "DUET_CHAT_RATE_PER_S": "1000", "DUET_VOICE_MAX_CALLS": "64"}
    load_at_start = os.getloadavg()[0]
    n_idle, rounds = (3, 1) if quick else (10, 3)
    stages = await cpu_per_stage()
    async with gateway_process(**env) as gw:
        await _turns(gw.ws_url, 2, random.Random(1))  # warm-up, not reported
        cpu_before = _process_cpu_s(gw.pid)
        idle = await _turns(gw.ws_url, n_idle, random.Random(2))
        stages["gateway_cpu_per_turn_idle_ms"] = round(
            (_process_cpu_s(gw.pid) - cpu_before) * 1000 / n_idle, 1)
        stop = asyncio.Event()
        lags: list[float] = []
        load = asyncio.create_task(_ingest_load(gw.base_url, stop, lags))
        await asyncio.sleep(2.0)
        loaded = await _turns(gw.ws_url, n_idle, random.Random(3))
        many = await _simultaneous(gw.ws_url, 10, rounds)
        staggered = await _staggered(gw.ws_url, 10, rounds)
        stop.set()
        await load
    save("voice_latency", {
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": load_at_start,
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "targets_ms_p50": {"first_audio": 350, "answer_audio": 900},
        "speech_end_definitions": _speech_end_definitions(),
        "cpu_per_stage": stages,
        "1_caller_idle": _report(idle),
        "1_caller_under_ingest_load": _report(loaded),
        "10_callers_under_ingest_load": _report(many),
        "10_callers_staggered_under_ingest_load": _report(staggered),
        "ingest_lag_ms_during_calls": summary(lags) if lags else None,
        "seconds": round(time.perf_counter() - started, 1),
    })
