"""The turn router and sessions on a virtual clock (looptime): the acknowledgment hold,
cancel, barge-in, failures, ownership and resume, with scripted agents.

Every ``asyncio.sleep`` below takes no real time; the loop's clock jumps ahead when
nothing is runnable, so latencies are exact numbers of the script.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from core.metrics import Metrics
from gateway.auth import Identity
from gateway.escalations import EscalationQueue
from gateway.events import Delta, Done, ErrorEvent, Escalated, ServerEvent, UserMessage
from gateway.protocol import ProtocolError
from gateway.router import TurnRouter
from gateway.service import ChatService, Conversation
from gateway.sessions import Sessions, TokenBucket
from ingest.kb import Hit
from ingest.store import Tier
from tests.scripted import NOW, InlineExecutor, ScriptedAck, ScriptedRetrieval

pytestmark = [pytest.mark.unit, pytest.mark.looptime]


@pytest.fixture
async def world() -> AsyncIterator[tuple[ChatService, ScriptedAck, ScriptedRetrieval]]:
    ack, retrieval = ScriptedAck(), ScriptedRetrieval()
    loop = asyncio.get_running_loop()
    router = TurnRouter(ack, retrieval, EscalationQueue(), Metrics(),  # type: ignore[arg-type]
                        ack_hold_s=0.1, clock=loop.time)
    router._ack_executor = InlineExecutor()  # type: ignore[assignment]
    async with Sessions(log_size=100, idle_s=3600, rate_burst=5, rate_per_s=1,
                        clock=loop.time) as sessions:
        yield ChatService(sessions, router, router.escalations, router.metrics), ack, retrieval


async def _turn(conversation: Conversation, text: str) -> list[ServerEvent]:
    """Submit and collect the turn's events up to its ``done`` (and an escalation)."""
    async with conversation.events() as events:
        await anext(events)  # SessionOpened
        turn_id = await conversation.submit(text)
        got: list[ServerEvent] = []
        async for item in events:
            got.append(item)
            if isinstance(item, Done) and item.turn_id == turn_id:
                break
        await asyncio.sleep(0)
        while (late := events.get_nowait()) is not None:
            got.append(late)
        return got


def _cache_something(conversation: Conversation) -> None:
    hit = Hit("c1", "hub-reset", "Hub", None, "Hub > Reset", "Hold it.", 1, NOW, "cms",
              Tier.hot, 0.9, 1.0, 0.9)
    conversation.session.cache.add([hit], np.ones((1, 384), np.float32) / np.sqrt(384),
                                   groups=("public",), as_of=NOW)


async def test_the_ack_comes_at_once_then_the_answer_on_the_script(world) -> None:
    chat, _, _ = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    events = await _turn(conversation, "How do I reset the hub?")
    assert [type(e).__name__ for e in events] == ["UserMessage", "Delta", "Delta", "Delta",
                                                  "Done"]
    ack, first, second = (e for e in events if isinstance(e, Delta))
    assert (ack.source, first.source, second.source) == ("ack", "answer", "answer")
    assert first.text.startswith(" ")  # the answer follows the ack in one stream
    done = events[-1]
    assert isinstance(done, Done)
    assert done.timings_ms.ack_first == 0.0
    assert done.timings_ms.answer_first == 500.0 and done.timings_ms.total == 700.0
    assert done.text == "".join(e.text for e in events if isinstance(e, Delta))
    assert [e.seq for e in events] == list(range(1, 6))


async def test_a_possible_prefetch_hit_holds_the_ack_until_the_search_starts(world) -> None:
    chat, _, retrieval = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    _cache_something(conversation)
    retrieval.script = [(0.03, "search"), (0.5, "Hold the button.")]
    done = (await _turn(conversation, "How do I reset the hub?"))[-1]
    assert isinstance(done, Done) and done.timings_ms.ack_first == 30.0


async def test_a_held_ack_goes_out_when_the_hold_runs_out(world) -> None:
    chat, _, retrieval = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    _cache_something(conversation)
    retrieval.script = [(2.0, "search"), (0.5, "Hold the button.")]
    done = (await _turn(conversation, "How do I reset the hub?"))[-1]
    assert isinstance(done, Done) and done.timings_ms.ack_first == 100.0


async def test_a_prefetch_hit_answered_within_the_hold_gets_no_ack(world) -> None:
    chat, _, retrieval = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    _cache_something(conversation)
    retrieval.script = [(0.02, "From memory.")]
    events = await _turn(conversation, "How do I reset the hub?")
    assert [e.source for e in events if isinstance(e, Delta)] == ["answer"]
    assert events[-1].timings_ms.ack_first is None  # type: ignore[attr-defined]


async def test_small_talk_gets_no_ack(world) -> None:
    chat, ack, retrieval = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    retrieval.script = [(0.0, "You're welcome!")]
    events = await _turn(conversation, "thanks!")
    assert [e.source for e in events if isinstance(e, Delta)] == ["answer"]
    assert ack.calls == []


async def test_a_failed_ack_costs_nothing_but_the_ack(world) -> None:
    chat, ack, _ = world
    ack.fail = True
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    events = await _turn(conversation, "How do I reset the hub?")
    assert [e.source for e in events if isinstance(e, Delta)] == ["answer", "answer"]
    assert not any(isinstance(e, ErrorEvent) for e in events)
    assert isinstance(events[-1], Done) and events[-1].decision == "answer"


async def test_a_failed_answer_says_so_plainly_and_ends_the_turn(world) -> None:
    chat, _, retrieval = world
    retrieval.fail_after = 1
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    events = await _turn(conversation, "How do I reset the hub?")
    error = next(e for e in events if isinstance(e, ErrorEvent))
    assert error.code == "turn_failed" and "Exception" not in error.message
    assert "fire" not in error.message
    assert isinstance(events[-2], Done) and events[-2].decision == "fallback"
    # a failed answer goes to a person, honestly, and the customer may go back to the bot
    assert isinstance(events[-1], Escalated) and events[-1].reason == "answer_failed"
    assert events[-1].message and "back to the bot" in events[-1].message
    retrieval.fail_after = None
    back = await _turn(conversation, "back to the bot please")
    assert isinstance(back[-1], Done) and "back with the assistant" in back[-1].text
    again = await _turn(conversation, "How do I reset the hub?")
    assert isinstance(again[-1], Done) and again[-1].decision == "answer"


async def test_cancel_ends_the_turn_with_what_was_sent_and_nothing_after(world) -> None:
    chat, _, retrieval = world
    retrieval.script = [(0.1, "search"), (0.1, "Hold"), (5.0, " the button.")]
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    async with conversation.events() as events:
        await anext(events)
        turn_id = await conversation.submit("How do I reset the hub?")
        got = []
        async for item in events:
            got.append(item)
            if isinstance(item, Delta) and item.source == "answer":
                break
        await conversation.cancel()
        done = await anext(events)
        assert isinstance(done, Done) and done.cancelled and done.turn_id == turn_id
        assert done.text == "Let me check that for you. Hold"
        await asyncio.sleep(10)
        assert events.get_nowait() is None  # no late delta, no second done
    with pytest.raises(ProtocolError) as refused:
        await conversation.cancel()
    assert refused.value.code == "no_turn"


async def test_a_new_message_barges_in(world) -> None:
    chat, _, retrieval = world
    retrieval.script = [(0.1, "search"), (3.0, "Slow answer.")]
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    async with conversation.events() as events:
        await anext(events)
        first = await conversation.submit("How do I reset the hub?")
        await asyncio.sleep(0.5)
        retrieval.script = [(0.1, "search"), (0.2, "Fast answer.")]
        second = await conversation.submit("Actually, how do I pair a bulb?")
        dones: list[Done] = []
        async for item in events:
            if isinstance(item, Done):
                dones.append(item)
                if item.turn_id == second:
                    break
    assert [(d.turn_id, d.cancelled) for d in dones] == [(first, True), (second, False)]
    assert dones[1].text == "Let me check that for you. Fast answer."


async def test_cancel_before_the_turn_started_still_ends_in_done(world) -> None:
    chat, _, _ = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    async with conversation.events() as events:
        await anext(events)
        turn_id = await conversation.submit("How do I reset the hub?")
        await conversation.cancel()  # the turn task has not run yet
        assert isinstance(await anext(events), UserMessage)
        done = await anext(events)
        assert isinstance(done, Done) and done.turn_id == turn_id and done.cancelled


async def test_a_handoff_reason_reaches_the_queue_not_the_history(world) -> None:
    chat, _, retrieval = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    await _turn(conversation, "How do I reset the hub?")
    async with conversation.events() as events:
        await anext(events)
        await conversation.handoff("I would like a person")
        escalated = await anext(events)
    assert isinstance(escalated, Escalated) and escalated.reason == "customer_request"
    assert chat.escalations.waiting()[0].note == "I would like a person"
    await _turn(conversation, "never mind, back to the bot")
    await _turn(conversation, "how do I reset it?")
    history = retrieval.contexts[-1].history
    assert all("person" not in text for _, text in history)
    assert [role for role, _ in history] == ["user", "assistant"]


async def test_floods_and_repeats_are_refused_and_change_nothing(world) -> None:
    chat, _, _ = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    await conversation.submit("hello there", message_id="m1")
    with pytest.raises(ProtocolError) as repeat:
        await conversation.submit("hello there", message_id="m1")
    assert repeat.value.code == "duplicate_message"
    for _ in range(4):
        await conversation.submit("again?")
    with pytest.raises(ProtocolError) as flood:
        await conversation.submit("and again?")
    assert flood.value.code == "rate_limited"
    await asyncio.sleep(1.0)  # one token a second refills
    await conversation.submit("after a pause")


async def test_only_the_owner_opens_a_session(world) -> None:
    chat, _, _ = world
    anonymous = await chat.open(Identity.anonymous_customer(), channel="web")
    assert anonymous.resume_token
    alice = await chat.open(Identity.for_channel("alice", ("staff",)), channel="web")
    assert alice.resume_token is None
    again = await chat.open(Identity.anonymous_customer(), channel="web",
                            session_id=anonymous.session_id,
                            resume_token=anonymous.resume_token)
    assert again.resumed and again.session is anonymous.session
    assert (await chat.open(Identity.for_channel("alice"), channel="web",
                            session_id=alice.session_id)).session is alice.session
    refusals = []
    for identity, session_id, token in [
        (Identity.anonymous_customer(), anonymous.session_id, None),
        (Identity.anonymous_customer(), anonymous.session_id, "x" * 32),
        (Identity.for_channel("mallory"), anonymous.session_id, anonymous.resume_token),
        (Identity.for_channel("mallory"), alice.session_id, None),
        (Identity.anonymous_customer(), alice.session_id, None),
        (Identity.anonymous_customer(), "no-such-session", None),
    ]:
        with pytest.raises(ProtocolError) as refused:
            await chat.open(identity, channel="web", session_id=session_id, resume_token=token)
        refusals.append((refused.value.code, refused.value.message))
    assert len(set(refusals)) == 1 and refusals[0][0] == "unauthorized"


async def test_resume_replays_after_a_seq_and_reports_a_gap() -> None:
    async with Sessions(log_size=4, idle_s=3600, rate_burst=5, rate_per_s=1) as sessions:
        session, _ = await sessions.create(channel="web", customer_id="c", groups=("public",))
        for i in range(6):
            await session.emit(Delta(source="system", text=str(i)))
        events, complete = session.replay(3)
        assert [e.seq for e in events] == [4, 5, 6] and complete
        events, complete = session.replay(1)  # 2 is no longer kept
        assert [e.seq for e in events] == [3, 4, 5, 6] and not complete
        assert session.replay(6) == ([], True)


def test_token_bucket_on_a_controlled_clock() -> None:
    now = [0.0]
    bucket = TokenBucket(burst=2, per_s=0.5, clock=lambda: now[0])
    assert bucket.take() and bucket.take() and not bucket.take()
    now[0] = 1.9
    assert not bucket.take()
    now[0] = 2.0
    assert bucket.take() and not bucket.take()
