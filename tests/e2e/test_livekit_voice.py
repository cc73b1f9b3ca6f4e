"""The LiveKit transport without a LiveKit server: the framework's own offline means.

A real gateway (NATS, Chroma, the real models) provides the ``ChatService``; an
``AgentSession`` runs in this process with Duet's STT/TTS plugins and ``RouterLLM``:
text-mode runs (``session.run(user_input=...)``), and a full voice loop with custom
``voice.io`` audio input and output fed real audio frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from core.natsd import EmbeddedNats
from tests.conftest import Gateway, make_settings, run_gateway
from tests.voice_client import AUDIO_DIR, read_wav

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SAMPLE_KB = AUDIO_DIR.parents[2] / "configs" / "sample_kb"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp = tmp_path_factory.mktemp("livekit")
    async with EmbeddedNats(tmp / "nats") as server:
        settings = make_settings(tmp, server.url, chat_rate_burst=50)
        async with run_gateway(settings) as gateway, \
                httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as client:
            for doc_id in ("hub-reset", "returns-policy"):
                res = await client.post("/v1/documents", params={"wait": "true"}, json={
                    "event_type": "CREATE", "doc_id": doc_id, "version": 1,
                    "content": (SAMPLE_KB / f"{doc_id}.md").read_text(),
                    "metadata": {"title": doc_id.replace("-", " ").title(),
                                 "acl": ["public"], "source": "cms"}})
                assert res.status_code == 200
            yield gateway


async def _speech(gw: Gateway) -> Any:
    for route in gw.app.routes:
        if getattr(route, "path", "") == "/v1/voice":
            return await route.endpoint.__self__.calls.loader.get()
    raise AssertionError("no voice channel")


async def test_text_mode_replies_come_from_the_router_ack_first(gw: Gateway) -> None:
    from livekit.agents import Agent, AgentSession

    from channels.livekit.plugins import RouterLLM
    from gateway.auth import Identity

    conversation = await gw.state.chat.open(Identity.for_channel("room-caller-1"),
                                            channel="livekit")
    async with conversation.events() as events, \
            AgentSession(llm=RouterLLM(conversation, events)) as session:
        await session.start(Agent(instructions="Duet support"))
        result = await session.run(user_input="How do I factory reset the hub?")
        message = result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
        text = message.event().item.text_content
    ack, _, answer = text.partition(". ")
    assert "15 seconds" in answer and "15 seconds" not in ack
    log = [e for e in conversation.session.log if e.type in ("user_message", "delta", "done")]
    assert log[0].text == "How do I factory reset the hub?"
    assert [e.source for e in log if e.type == "delta"][0] == "ack"
    assert log[-1].type == "done" and not log[-1].cancelled


async def test_a_voice_loop_with_real_audio_frames_hears_and_speaks(gw: Gateway) -> None:
    from livekit import rtc
    from livekit.agents import Agent, voice

    from channels.livekit.plugins import RouterLLM
    from channels.livekit.worker import build_session
    from gateway.auth import Identity

    speech = await _speech(gw)
    pcm, rate = read_wav(AUDIO_DIR / "q_hub_reset.wav")
    pcm += b"\x00\x00" * rate * 2  # then the caller listens

    class FileInput(voice.io.AudioInput):
        def __init__(self) -> None:
            super().__init__(label="file")
            self._offset = 0
            self.sent_all = asyncio.Event()

        async def __anext__(self) -> rtc.AudioFrame:
            step = rate // 50 * 2
            await asyncio.sleep(0.02)
            if self._offset >= len(pcm):
                self.sent_all.set()
                chunk = b"\x00\x00" * (rate // 50)
            else:
                chunk = pcm[self._offset:self._offset + step]
                chunk += b"\x00" * (step - len(chunk))
                self._offset += step
            return rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2)

    class Collect(voice.io.AudioOutput):
        def __init__(self) -> None:
            super().__init__(label="collect",
                             capabilities=voice.io.AudioOutputCapabilities(pause=False))
            self.frames: list[rtc.AudioFrame] = []
            self.heard = asyncio.Event()
            self._segment = 0.0

        async def capture_frame(self, frame: rtc.AudioFrame) -> None:
            await super().capture_frame(frame)
            if self._segment == 0.0:
                self.on_playback_started(created_at=asyncio.get_running_loop().time())
            self.frames.append(frame)
            self._segment += frame.duration
            if sum(f.duration for f in self.frames) > 2.0:
                self.heard.set()

        def flush(self) -> None:
            super().flush()
            self.on_playback_finished(playback_position=self._segment, interrupted=False)
            self._segment = 0.0

        def clear_buffer(self) -> None:
            self.on_playback_finished(playback_position=self._segment, interrupted=True)
            self._segment = 0.0

    conversation = await gw.state.chat.open(Identity.for_channel("room-caller-2"),
                                            channel="livekit")
    output = Collect()
    async with conversation.events() as events:
        session = build_session(speech, RouterLLM(conversation, events))
        session.input.audio = FileInput()
        session.output.audio = output
        await session.start(agent=Agent(instructions="Duet support"))
        try:
            await asyncio.wait_for(output.heard.wait(), 60)
        finally:
            await session.aclose()
    said = [e for e in conversation.session.log if e.type == "user_message"]
    assert said and "reset" in said[0].text.lower() and "hub" in said[0].text.lower()
    assert any(e.type == "delta" and e.source == "ack" for e in conversation.session.log)
    audio = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in output.frames])
    assert output.frames[0].sample_rate == speech.tts.sample_rate
    assert np.abs(audio).max() > 1000  # speech, not silence
