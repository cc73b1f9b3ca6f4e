"""Building the chat services (agents, router, sessions) when the gateway starts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from agents.ack import AckAgent
from agents.escalation import EscalationPolicy
from agents.intents import IntentCatalog
from agents.retrieval import RetrievalAgent, build_generator
from agents.retrieval.journeys import Journeys
from gateway.chat import ChatService
from gateway.escalations import EscalationQueue
from gateway.router import TurnRouter
from gateway.sessions import SessionStore
from gateway.state import AppState

__all__ = ["chat_services"]


@contextlib.asynccontextmanager
async def chat_services(state: AppState) -> AsyncIterator[ChatService]:
    """Agents, router and session store for the app's lifetime (``state.chat``)."""
    settings = state.settings
    kb = state.runtime.kb
    assert kb is not None
    intents = await asyncio.to_thread(IntentCatalog.load, kb.embedder)
    policy = EscalationPolicy()
    agent = RetrievalAgent(kb, generator=build_generator(settings), journeys=Journeys.load(),
                           policy=policy, metrics=state.metrics,
                           rerank=settings.rerank_passages)
    async with agent:
        await agent.warm_up()
        escalations = EscalationQueue()
        router = TurnRouter(AckAgent(kb.embedder, intents, topics=kb.topics), agent, escalations, state.metrics,
                            ack_hold_s=settings.ack_hold_s)
        async with SessionStore(log_size=settings.session_log_events,
                                idle_s=settings.session_idle_s,
                                rate_burst=settings.chat_rate_burst,
                                rate_per_s=settings.chat_rate_per_s) as sessions:
            service = ChatService(sessions, router, escalations)
            state.chat = service
            try:
                yield service
            finally:
                router.close()
