"""``duet voice-worker``: a LiveKit Agents worker that answers callers in rooms.

Each job (a room) opens a conversation for the first remote participant — identity from a
``customer_token`` attribute when it verifies, else the participant's identity in the
group ``public`` — and runs an ``AgentSession`` whose STT, TTS and replies are Duet's
(:mod:`channels.livekit.plugins`). The worker process builds its own chat services on the
same NATS and Chroma as the gateway (sessions are durable in JetStream, so a call's
transcript is the same session the supervisor console sees).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from core.settings import Settings

__all__ = ["build_session", "run_worker"]

log = logging.getLogger("duet.livekit")


def build_session(speech, router_llm):  # type: ignore[no-untyped-def]
    """An ``AgentSession`` over Duet's STT (with the Silero VAD), TTS and router."""
    from livekit.agents import AgentSession, stt
    from livekit.plugins import silero

    from channels.livekit.plugins import DuetSTT, DuetTTS

    settings = speech.settings
    vad = silero.VAD.load(min_silence_duration=settings.voice_end_silence_ms / 1000,
                          activation_threshold=settings.voice_vad_threshold)
    return AgentSession(
        stt=stt.StreamAdapter(stt=DuetSTT(speech.stt), vad=vad), vad=vad,
        tts=DuetTTS(speech.tts), llm=router_llm,
        # The VAD's own silence ends the turn: no extra endpointing delay on top of it.
        turn_handling={"turn_detection": "vad",
                       "endpointing": {"mode": "fixed", "min_delay": 0.0}})


@contextlib.asynccontextmanager
async def _chat_stack(settings: Settings) -> AsyncIterator[Any]:
    """The knowledge runtime (no ingest worker) and the chat services, as in the gateway."""
    from core.metrics import Metrics
    from core.natsd import resolve_nats_url
    from gateway.auth import CustomerTokens
    from gateway.services import chat_services
    from gateway.state import AppState
    from ingest.runtime import KnowledgeRuntime

    url = resolve_nats_url(settings.nats_url, settings.data_dir)
    metrics = Metrics()
    async with KnowledgeRuntime(settings, url, metrics=metrics, run_worker=False) as runtime:
        state = AppState(settings=settings, metrics=metrics, runtime=runtime,
                         customer_tokens=CustomerTokens(settings))
        async with chat_services(state):
            yield state


def _setup(proc: Any) -> None:
    """Each job process loads the speech models once (``setup_fnc``; module level: the
    job processes are started by pickling it)."""
    from channels.voice.speech import Speech

    proc.userdata["settings"] = settings = Settings()
    proc.userdata["speech"] = Speech.load(settings)


async def _entrypoint(ctx: Any) -> None:
    """One room: a conversation for its caller and an ``AgentSession`` until it closes."""
    from livekit.agents import Agent

    from channels.livekit.plugins import RouterLLM
    from gateway.auth import Identity

    settings: Settings = ctx.proc.userdata["settings"]
    speech = ctx.proc.userdata["speech"]
    await speech.warm()
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    async with _chat_stack(settings) as state:
        identity = Identity.for_channel(participant.identity)
        token = participant.attributes.get("customer_token")
        if token:
            try:
                identity = state.customer_tokens.verify(token)
            except Exception:
                log.warning("a participant's customer token was refused; calling as its "
                            "room identity", extra={"participant": participant.identity})
        assert state.chat is not None
        conversation = await state.chat.open(identity, channel="livekit")
        async with conversation.events() as events:
            session = build_session(speech, RouterLLM(conversation, events))
            closed = asyncio.Event()
            session.on("close", lambda _event: closed.set())
            await session.start(agent=Agent(instructions="Duet support"), room=ctx.room)
            await closed.wait()


def run_worker(settings: Settings) -> int:
    """Run the worker until interrupted (``livekit.agents.cli`` handles signals)."""
    from livekit.agents import AgentServer, cli

    server = AgentServer(
        ws_url=settings.livekit_url, api_key=settings.livekit_api_key,
        api_secret=(settings.livekit_api_secret.get_secret_value()
                    if settings.livekit_api_secret else None),
        setup_fnc=_setup,
        # Each job process holds the speech models (~300 MB) and loads them in seconds.
        num_idle_processes=1, initialize_process_timeout=120.0)
    server.rtc_session()(_entrypoint)
    sys.argv = [sys.argv[0], "start"]
    cli.run_app(server)
    return 0
