"""Building the chat services (agents, router, sessions) when the gateway starts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from agents.ack import AckAgent
from agents.escalation import EscalationPolicy, HumanOnlyTopics
from agents.intents import IntentCatalog
from agents.retrieval import RetrievalAgent, build_generator
from agents.retrieval.journeys import Journeys
from gateway.audit import AuditLog
from gateway.escalations import EscalationQueue, each
from gateway.router import TurnRouter
from gateway.service import ChatService
from gateway.sessions import SessionLimits, Sessions
from gateway.state import AppState
from gateway.store import SessionJournal

__all__ = ["chat_services"]


@contextlib.asynccontextmanager
async def chat_services(state: AppState) -> AsyncIterator[ChatService]:
    """Agents, router and sessions for the app's lifetime (``state.chat``)."""
    settings = state.settings
    kb = state.runtime.kb
    nc = state.runtime.nc
    assert kb is not None and nc is not None
    intents = await asyncio.to_thread(IntentCatalog.load, kb.embedder)
    policy = EscalationPolicy(low_confidence_turns=settings.low_confidence_turns)
    human_only = await asyncio.to_thread(HumanOnlyTopics.load, settings.human_only_topics)
    agent = RetrievalAgent(kb, generator=build_generator(settings), journeys=Journeys.load(),
                           policy=policy, metrics=state.metrics,
                           rerank=settings.rerank_passages)
    journal = None
    if settings.durable_sessions:
        journal = await SessionJournal.open(
            nc.jetstream(), log_events=settings.session_log_events,
            ttl_s=settings.session_ttl_s, max_bytes=settings.session_log_max_bytes,
            bucket_max_bytes=settings.state_bucket_max_bytes)
    js = nc.jetstream()
    escalations = await EscalationQueue.open(js, ttl_s=settings.session_ttl_s,
                                             max_bytes=settings.state_bucket_max_bytes)
    audit = await AuditLog.open(js, max_age_s=settings.audit_max_age_s,
                                max_bytes=settings.audit_max_bytes)
    state.runtime.tasks.probe("keyword-index", agent.keyword.health)
    state.runtime.tasks.probe("topic-index", kb.topics.health)
    async with agent, escalations:
        await agent.warm_up()
        router = TurnRouter(AckAgent(kb.embedder, intents, topics=kb.topics), agent,
                            escalations, state.metrics, ack_hold_s=settings.ack_hold_s,
                            policy=policy, human_only=human_only, audit=audit)
        async with Sessions(log_size=settings.session_log_events, idle_s=settings.session_idle_s,
                            rate_burst=settings.chat_rate_burst,
                            rate_per_s=settings.chat_rate_per_s, journal=journal,
                            nc=nc, metrics=state.metrics,
                            limits=SessionLimits.from_settings(settings)) as sessions:
            service = ChatService(sessions, router, escalations, state.metrics)
            state.chat = service
            timeout_s = settings.handoff_timeout_s
            try:
                async with asyncio.TaskGroup() as group:
                    timeouts = group.create_task(each(
                        min(5.0, timeout_s / 4), lambda: service.tell_timed_out(timeout_s)))
                    try:
                        yield service
                    finally:
                        timeouts.cancel()
            finally:
                router.close()
