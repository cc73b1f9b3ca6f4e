"""Callers on ``GET /v1/voice`` (docs/protocol.md §4), with the real models.

One gateway with the sample knowledge base serves the module (real NATS, embedded Chroma,
faster-whisper tiny.en, Piper, Silero VAD). Spoken questions are streamed in real time.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from channels.voice.speech import QUICK_ACKS
from core.natsd import EmbeddedNats
from tests.conftest import Gateway, make_settings, run_gateway
from tests.e2e.test_chat import _wait_sample_kb
from tests.voice_client import AUDIO_DIR, VoiceClient, read_wav

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MAX_CALLS = 12


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp = tmp_path_factory.mktemp("voice")
    async with EmbeddedNats(tmp / "nats") as server:
        settings = make_settings(tmp, server.url, load_sample_kb=True, voice_preload=True,
                                 voice_max_calls=MAX_CALLS, voice_idle_timeout_s=10.0,
                                 chat_rate_burst=50)
        async with run_gateway(settings) as gateway:
            await _wait_sample_kb(gateway)
            yield gateway


def _calls(gw: Gateway) -> Any:
    for route in gw.app.routes:
        if getattr(route, "path", "") == "/v1/voice":
            return route.endpoint.__self__.calls
    raise AssertionError("no voice route")


async def _until_no_calls(calls: Any) -> None:
    for _ in range(200):
        if calls.active == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{calls.active} calls still open")


async def _open(gw: Gateway, **hello: Any) -> VoiceClient:
    client = await VoiceClient.connect(gw.ws_url, **hello)
    await client.wait_type("session", timeout_s=60)
    return client


def _is_final(words: str):
    return lambda e: e["type"] == "transcript" and e["final"] and words in e["text"].lower()


async def test_a_spoken_question_is_heard_acknowledged_answered_and_spoken(gw: Gateway) -> None:
    client = await _open(gw)
    fmt = next(e for e in client.events if e["type"] == "audio_format")
    assert fmt == {**fmt, "sample_rate": 22050, "channels": 1, "encoding": "pcm_s16le"}
    pcm, rate = read_wav(AUDIO_DIR / "q_return.wav")
    await client.stream(pcm, rate)
    final = await client.wait_for(_is_final("return"))
    assert "opened item" in final["text"].lower() or "open item" in final["text"].lower()
    message = await client.wait_type("user_message")
    assert message["text"] == final["text"]
    ack = await client.wait_for(lambda e: e["type"] == "delta" and e["source"] == "ack")
    done = await client.wait_type("done")
    assert "restocking" in done["text"] and done["citations"][0]["doc_id"] == "returns-policy"
    timings = await client.wait_type("voice_timings", turn_id=done["turn_id"])
    spoken = timings["ms_after_speech_end"]
    assert {"final_transcript", "ack_audio", "answer_audio"} <= set(spoken)
    assert spoken["ack_audio"] <= spoken["answer_audio"]
    # Speech came after the acknowledgment's text, and carries the answer too (> 3 s of it).
    await client.wait_audio(3 * 22050 * 2, after=ack["_at"])
    # Before the turn exists, at most the quick "Sure." (said when the silence ends the
    # turn while its transcript is still being decoded, on a busy machine).
    early = sum(len(c) for at, c in client.audio if at < message["_at"])
    assert early <= 0.6 * 22050 * 2
    await client.close()


async def test_speech_over_the_reply_stops_its_audio_and_cancels_the_turn(gw: Gateway) -> None:
    client = await _open(gw)
    pcm, rate = read_wav(AUDIO_DIR / "q_return.wav")
    await client.stream(pcm, rate)
    done_first = await client.wait_type("done")
    # The reply is being spoken (it lasts ~20 s): wait for its answer audio, then talk.
    await client.wait_type("voice_timings", turn_id=done_first["turn_id"])
    other, _ = read_wav(AUDIO_DIR / "q_hub_reset.wav")
    barge = asyncio.create_task(client.stream(other, rate))
    clear = await client.wait_type("audio_clear")
    assert clear["turn_id"] == done_first["turn_id"] and clear["spoken"]
    # What the caller had heard: a quick acknowledgment, then the reply's own words.
    quick, _, rest = clear["spoken"].partition(" ")
    assert quick in QUICK_ACKS and rest and rest.split()[0] in done_first["text"]
    await barge
    nxt = await client.wait_for(lambda e: e["type"] == "user_message"
                                and e["turn_id"] != done_first["turn_id"])
    # In the second after the stop (the caller is still speaking: the next turn, and its
    # quick "Sure.", cannot start before the clip's ~2 s of speech end), at most one
    # frame in flight arrived.
    late = sum(len(c) for at, c in client.audio if clear["_at"] <= at < clear["_at"] + 1.0)
    assert late <= 2 * 882
    assert "reset" in nxt["text"].lower()
    await client.wait_type("done", turn_id=nxt["turn_id"])
    await client.close()


async def test_barge_in_while_the_turn_runs_cancels_it(gw: Gateway) -> None:
    client = await _open(gw)
    await client.send(type="message", text="Can I return an opened item?")
    first = await client.wait_type("user_message")
    await client.wait_type("done", turn_id=first["turn_id"])
    pcm, rate = read_wav(AUDIO_DIR / "q_hub_reset.wav")
    await client.stream(pcm, rate)
    clear = await client.wait_type("audio_clear")
    assert clear["turn_id"] == first["turn_id"]
    await client.wait_for(_is_final("reset"))
    await client.close()


async def test_telephone_audio_at_8_khz_is_resampled_and_heard(gw: Gateway) -> None:
    client = await _open(gw, sample_rate=8000)
    pcm, rate = read_wav(AUDIO_DIR / "OSR_us_000_0034_8k.wav")
    assert rate == 8000
    await client.stream(pcm[: 8 * rate * 2], rate, realtime=2.0)  # two sentences
    await client.silence(0.6, rate=rate)
    first = await client.wait_for(_is_final("gold ring"))
    assert "please" in first["text"].lower()
    await client.wait_for(_is_final("journey"))
    await client.close()


@pytest.mark.parametrize(("frame", "code"), [
    ("not json", "invalid_json"),
    (json.dumps({"type": "dance"}), "unknown_type"),
    (json.dumps({"type": "hello", "sample_rate": 96000}), "unsupported_audio"),
    (json.dumps({"type": "message", "text": "hi"}).encode(), "invalid_audio"),
    (b"\x00" * 200_000, "invalid_audio"),
])
async def test_bad_frames_get_an_error_and_the_call_goes_on(gw: Gateway, frame: str | bytes,
                                                           code: str) -> None:
    client = await _open(gw)
    await client.ws.send(frame)
    error = await client.wait_type("error")
    assert error["code"] == code and error["message"]
    await client.send(type="message", text="How do I factory reset the hub?")
    done = await client.wait_type("done")
    assert done["citations"][0]["doc_id"] == "hub-reset"
    await client.close()


async def test_a_message_over_the_socket_limit_closes_it_with_1009(gw: Gateway) -> None:
    client = await _open(gw)
    await client.ws.send(b"\x00" * (gw.settings.ws_max_bytes + 1))
    await asyncio.wait_for(client._reader, 10)
    assert client.ws.close_code == 1009
    # The gateway goes on: the next caller is served.
    client = await _open(gw)
    await client.send(type="message", text="How do I factory reset the hub?")
    assert (await client.wait_type("done"))["citations"][0]["doc_id"] == "hub-reset"
    await client.close()


async def test_odd_frame_sizes_and_audio_before_hello_are_fine(gw: Gateway) -> None:
    client = await VoiceClient.connect(gw.ws_url, send_hello=False)
    ws = client.ws
    pcm, rate = read_wav(AUDIO_DIR / "q_hub_reset.wav")
    sizes = [1, 333, 640, 7, 2048, 999]
    offset, i = 0, 0
    while offset < len(pcm):
        size = sizes[i % len(sizes)]
        await ws.send(pcm[offset:offset + size])
        offset, i = offset + size, i + 1
        if i % 8 == 0:
            await asyncio.sleep(0.01)
    await client.silence(0.8)
    session = await client.wait_type("session")
    assert session["channel"] == "voice"
    await client.wait_for(_is_final("reset"))
    assert not [e for e in client.events if e["type"] == "error"]
    await client.close()


async def test_minutes_of_silence_hear_nothing_and_an_idle_call_is_ended(gw: Gateway) -> None:
    client = await _open(gw)
    await client.stream(b"\x00\x00" * 16000 * 120, 16000, realtime=60.0)  # 2 min of silence
    await client.send(type="cancel")  # nothing to cancel: an error, the call goes on
    error = await client.wait_type("error")
    assert error["code"] == "no_turn"
    assert not [e for e in client.events if e["type"] in ("transcript", "user_message")]
    idle = await client.wait_for(lambda e: e.get("code") == "idle_timeout", timeout_s=30)
    assert idle["type"] == "error"
    await asyncio.wait_for(client._reader, 10)  # the server hung up
    assert client.closed


def _thread_kinds() -> Counter[str]:
    """This process's threads by kind (their names without numbers: a pool's workers are
    one kind, and so are the unnamed ``Thread-N (target)`` threads of one target), less
    the event loop's default executor (a pool of at most min(32, cpus + 4) that grows with
    load and is reused)."""
    return Counter(re.sub(r"\d+", "", t.name) for t in threading.enumerate()
                   if not t.name.startswith("asyncio_"))


async def test_a_dropped_socket_mid_reply_and_many_callers_leave_nothing_behind(
        gw: Gateway) -> None:
    calls = _calls(gw)
    pcm, rate = read_wav(AUDIO_DIR / "q_hub_reset.wav")
    client = await _open(gw)
    await client.stream(pcm, rate, realtime=2.0)
    await client.wait_type("done")
    await client.ws.close()  # hang up while the reply is spoken
    await _until_no_calls(calls)
    threads_before = _thread_kinds()  # after one call: the models' pools are started
    clients = list(await asyncio.gather(*(_open(gw) for _ in range(MAX_CALLS))))
    extra = await VoiceClient.connect(gw.ws_url, send_hello=False)
    await extra.ws.send(b"\x00\x00" * 320)
    busy = await extra.wait_type("error")
    assert busy["code"] == "busy"
    await asyncio.wait_for(extra._reader, 10)
    await asyncio.gather(*(c.stream(pcm, rate, realtime=2.0) for c in clients))
    await asyncio.gather(*(c.silence(0.5) for c in clients))
    finals = await asyncio.gather(*(c.wait_for(_is_final("reset"), timeout_s=120)
                                    for c in clients))
    assert len(finals) == MAX_CALLS
    for c in clients:
        await c.close()
    await _until_no_calls(calls)
    gc.collect()
    grown = {kind: n for kind, n in _thread_kinds().items()
             if n > threads_before.get(kind, 0) + 1}
    assert grown == {}, (grown, threads_before)


async def test_the_voice_page_hears_a_browser_microphone_and_plays_the_reply(
        gw: Gateway, tmp_path: Any) -> None:
    """Debian chromium, headless, its fake microphone fed a recorded question."""
    from playwright.async_api import async_playwright

    from tests.data.audio.make_questions import write_wav

    pcm, rate = read_wav(AUDIO_DIR / "q_return.wav")
    speech = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    question = tmp_path / "question.wav"
    write_wav(question, np.concatenate([np.zeros(rate * 2, np.float32), speech,
                                        np.zeros(rate * 8, np.float32)]), rate)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={question}%noloop",
            "--autoplay-policy=no-user-gesture-required"])
        try:
            page = await browser.new_page()
            await page.goto(f"{gw.base_url}/voice")
            await page.click("#start")
            await page.wait_for_function(
                "window.duet.events.some(e => e.type === 'done')", timeout=60_000)
            await page.wait_for_function(
                "window.duet.audioBytes > 2 * 22050 * 2 && window.duet.chunksPlayed > 10",
                timeout=60_000)
            transcript = await page.inner_text("#transcript")
            reply = await page.inner_text("#reply")
            await page.screenshot(path=str(tmp_path / "voice-page.png"), full_page=True)
        finally:
            await browser.close()
    assert "return" in transcript.lower()
    assert "restocking" in reply
