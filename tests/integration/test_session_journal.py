"""Sessions kept in JetStream (real nats-server): two writers, loading, an interrupted turn."""

from __future__ import annotations

import asyncio

import pytest

from core.metrics import Metrics
from gateway.auth import Identity
from gateway.escalations import EscalationQueue
from gateway.events import Delta, Done, UserMessage
from gateway.router import TurnRouter
from gateway.service import ChatService
from gateway.sessions import Sessions
from gateway.store import SessionJournal
from tests.scripted import InlineExecutor, ScriptedAck, ScriptedRetrieval

pytestmark = pytest.mark.integration


@pytest.fixture
async def journal(nc) -> SessionJournal:
    return await SessionJournal.open(nc.jetstream(), log_events=50, ttl_s=3600)


def _sessions(journal: SessionJournal, nc) -> Sessions:
    return Sessions(log_size=50, idle_s=3600, rate_burst=50, rate_per_s=10, journal=journal,
                    nc=nc)


def _service(sessions: Sessions) -> ChatService:
    router = TurnRouter(ScriptedAck(), ScriptedRetrieval(), EscalationQueue(),  # type: ignore[arg-type]
                        Metrics(), ack_hold_s=0.1)
    router._ack_executor = InlineExecutor()  # type: ignore[assignment]
    return ChatService(sessions, router, router.escalations, router.metrics)


async def test_two_processes_writing_one_session_never_interleave_blindly(
        journal: SessionJournal, nc) -> None:
    async with _sessions(journal, nc) as a, _sessions(journal, nc) as b:
        session_a, _ = await a.create(channel="web", customer_id="alice", groups=("public",))
        session_b = await b.get(session_a.id)
        assert session_b is not None and session_b is not session_a

        async def write(session, name: str) -> None:
            for i in range(15):
                await session.emit(Delta(source="system", text=f"{name}{i}"))

        await asyncio.gather(write(session_a, "a"), write(session_b, "b"))
        logged = await journal.read(session_a.id)
        seqs = [entry.event.seq for entry in logged]
        assert seqs == list(range(1, 31))  # one total order, no seq twice
        texts = [entry.event.text for entry in logged]  # type: ignore[attr-defined]
        assert sorted(texts) == sorted([f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)])
        # each process holds the one order, the other's events included
        for session in (session_a, session_b):
            await session.refresh()
            assert [e.wire() for e in session.log] == [entry.event.wire() for entry in logged]


async def test_a_loaded_session_has_its_record_and_log(journal: SessionJournal, nc) -> None:
    async with _sessions(journal, nc) as a:
        chat = _service(a)
        conversation = await chat.open(Identity.anonymous_customer(), channel="web")
        async with conversation.events() as events:
            await anext(events)
            await conversation.submit("How do I reset the hub?", message_id="m-1")
            async for item in events:
                if isinstance(item, Done):
                    break
        await asyncio.sleep(0.05)
        seen = list(conversation.session.log)
    async with _sessions(journal, nc) as b:
        chat = _service(b)
        again = await chat.open(Identity.anonymous_customer(), channel="web",
                                session_id=conversation.session_id,
                                resume_token=conversation.resume_token)
        assert [e.wire() for e in again.session.log] == [e.wire() for e in seen]
        assert again.session.history[0] == ("user", "How do I reset the hub?")
        assert again.session.knows_message("m-1")  # a re-send after the restart is a repeat


async def test_a_turn_whose_process_died_is_closed_and_run_again(
        journal: SessionJournal, nc) -> None:
    async with _sessions(journal, nc) as dead:
        session, token = await dead.create(channel="web", customer_id=None, groups=("public",))
        await session.emit(UserMessage(turn_id="t-1", text="How do I reset the hub?"))
        await session.emit(Delta(turn_id="t-1", source="ack", text="Let me check."))
    # the process is gone (its heartbeat retired); another one loads the session
    async with _sessions(journal, nc) as alive:
        chat = _service(alive)
        conversation = await chat.open(Identity.anonymous_customer(), channel="web",
                                       session_id=session.id, resume_token=token)
        async with conversation.events(resume_from=2) as events:
            assert (await anext(events)).type == "session"
            closed = await anext(events)
            assert isinstance(closed, Done) and closed.turn_id == "t-1"
            assert closed.interrupted and closed.cancelled and closed.text == "Let me check."
            rerun = await anext(events)
            assert isinstance(rerun, UserMessage) and rerun.text == "How do I reset the hub?"
            async for item in events:
                if isinstance(item, Done):
                    assert item.turn_id == rerun.turn_id and not item.cancelled
                    assert "15 seconds" in item.text
                    break


async def test_a_turn_still_running_elsewhere_is_left_alone(journal: SessionJournal, nc) -> None:
    async with _sessions(journal, nc) as busy, _sessions(journal, nc) as other:
        session, token = await busy.create(channel="web", customer_id=None, groups=("public",))
        await session.emit(UserMessage(turn_id="t-1", text="How do I reset the hub?"))
        chat = _service(other)
        conversation = await chat.open(Identity.anonymous_customer(), channel="web",
                                       session_id=session.id, resume_token=token)
        async with conversation.events(resume_from=1) as events:
            await anext(events)
            await asyncio.sleep(0.3)
            assert events.get_nowait() is None  # not run twice
            # what the busy process says next reaches this one's listener
            await session.emit(Delta(turn_id="t-1", source="answer", text="Hold it."))
            mirrored = await asyncio.wait_for(anext(events), 5)
            assert isinstance(mirrored, Delta) and mirrored.seq == 2


async def test_a_turn_cut_by_a_graceful_shutdown_runs_again_in_the_next_process(
        journal: SessionJournal, nc) -> None:
    async with _sessions(journal, nc) as stopping:
        chat = _service(stopping)
        chat.router.retrieval.script = [(0.05, "search"), (30.0, "Too late.")]  # type: ignore[attr-defined]
        conversation = await chat.open(Identity.anonymous_customer(), channel="web")
        async with conversation.events() as events:
            await anext(events)
            await conversation.submit("How do I reset the hub?")
            async for item in events:
                if isinstance(item, Delta):
                    break  # the acknowledgment is out; the answer is still coming
    logged = [entry.event for entry in await journal.read(conversation.session_id)]
    assert not any(isinstance(e, Done) for e in logged)  # no "cancelled" for the customer
    async with _sessions(journal, nc) as restarted:
        chat = _service(restarted)
        again = await chat.open(Identity.anonymous_customer(), channel="web",
                                session_id=conversation.session_id,
                                resume_token=conversation.resume_token)
        async with again.events(resume_from=len(logged)) as events:
            await anext(events)
            dones = []
            async for item in events:
                if isinstance(item, Done):
                    dones.append(item)
                    if not item.interrupted:
                        break
    assert dones[0].interrupted and dones[1].decision == "answer"
    assert "15 seconds" in dones[1].text
