"""The human side on a virtual clock, with scripted agents: the policy (two low-confidence
turns, human-only topics, failures), waiting without facts, left messages, back to the bot,
claims (one holder), a person's words to the customer and into the bot's history, the
timeout notice, the audit log, and agent-assist drafts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.escalation import EscalationPolicy, HumanOnlyTopics, wants_the_bot
from agents.retrieval import AnswerFinal, TurnContext
from core.metrics import Metrics
from gateway.audit import AuditLog
from gateway.auth import Identity
from gateway.escalations import ConversationState, EscalationQueue
from gateway.events import AgentJoined, AgentLeft, Delta, Done, Escalated, ServerEvent
from gateway.protocol import ProtocolError
from gateway.router import TurnRouter
from gateway.service import ChatService, Conversation
from gateway.sessions import Sessions
from gateway.supervisor import SupervisorDesk, parse_supervisor_message
from tests.scripted import InlineExecutor, ScriptedAck, ScriptedRetrieval

pytestmark = [pytest.mark.unit, pytest.mark.looptime]


class Retrieval(ScriptedRetrieval):
    """Scripted answers whose escalation reason the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    async def stream(self, ctx: TurnContext) -> AsyncIterator[Any]:
        async for item in super().stream(ctx):
            if isinstance(item, AnswerFinal) and self.reason:
                item = AnswerFinal(**{**item.__dict__, "escalate_reason": self.reason,
                                      "confidence": 0.1, "decision": "fallback"})
            yield item


@pytest.fixture
async def world() -> AsyncIterator[tuple[ChatService, Retrieval, SupervisorDesk]]:
    retrieval = Retrieval()
    loop = asyncio.get_running_loop()
    queue = EscalationQueue()
    router = TurnRouter(ScriptedAck(), retrieval, queue, Metrics(),  # type: ignore[arg-type]
                        clock=loop.time, policy=EscalationPolicy(),
                        human_only=HumanOnlyTopics.load(), audit=AuditLog())
    router._ack_executor = InlineExecutor()  # type: ignore[assignment]
    async with Sessions(log_size=500, idle_s=3600, rate_burst=50, rate_per_s=10,
                        clock=loop.time) as sessions:
        chat = ChatService(sessions, router, queue, router.metrics)
        yield chat, retrieval, SupervisorDesk(chat)


async def _turn(conversation: Conversation, text: str) -> list[ServerEvent]:
    async with conversation.events() as events:
        await anext(events)
        turn_id = await conversation.submit(text)
        got: list[ServerEvent] = []
        async for item in events:
            got.append(item)
            if isinstance(item, Done) and item.turn_id == turn_id:
                break
        await asyncio.sleep(1)
        while (late := events.get_nowait()) is not None:
            got.append(late)
        return got


def _types(events: list[ServerEvent]) -> list[str]:
    return [e.type for e in events]


async def test_low_confidence_escalates_on_the_second_turn_in_a_row(world) -> None:
    chat, retrieval, _ = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    retrieval.reason = "low_confidence"
    first = await _turn(conversation, "what is the warranty on the moon lamp?")
    assert "escalated" not in _types(first)
    retrieval.reason = None
    assert "escalated" not in _types(await _turn(conversation, "how do I reset the hub?"))
    retrieval.reason = "not_found"
    assert "escalated" not in _types(await _turn(conversation, "and the sun lamp?"))
    second = await _turn(conversation, "and the star lamp?")
    escalated = second[-1]
    assert isinstance(escalated, Escalated) and escalated.reason == "not_found"
    assert escalated.queue_position == 1 and escalated.supervisors_online == 0
    assert escalated.message and "nobody is online" in escalated.message


async def test_a_human_only_topic_is_not_answered_by_the_bot(world) -> None:
    chat, retrieval, _ = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    events = await _turn(conversation, "Someone hacked my account and changed my password")
    assert _types(events) == ["user_message", "delta", "done", "escalated"]
    assert events[1].source == "answer" and "person" in events[1].text  # type: ignore[attr-defined]
    assert not events[2].citations and events[2].decision is None  # type: ignore[attr-defined]
    assert events[-1].reason == "account_takeover"  # type: ignore[attr-defined]
    assert retrieval.contexts == []  # no facts were looked up
    assert HumanOnlyTopics.load().match("I will file a chargeback") == "chargeback"
    assert HumanOnlyTopics.load().match("I want to end my life") == "self_harm"
    assert HumanOnlyTopics.load().match("How do I reset the hub?") is None


async def test_waiting_keeps_messages_answers_no_facts_and_can_go_back(world) -> None:
    chat, retrieval, _ = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    await chat.escalations.announce("alice", "c1")
    await conversation.handoff("a person please")
    events = await _turn(conversation, "How do I reset the hub?")
    assert retrieval.contexts == []
    assert _types(events) == ["user_message", "delta", "done"]
    assert "first in the queue" in events[-1].text  # type: ignore[attr-defined]
    record = chat.escalations.get(conversation.session_id)
    assert record is not None and [m.text for m in record.messages] == ["How do I reset the hub?"]
    assert wants_the_bot("ok, back to the bot") and not wants_the_bot("my bot vacuum broke")
    back = await _turn(conversation, "ok, back to the bot")
    assert "back with the assistant" in back[-1].text  # type: ignore[attr-defined]
    assert chat.escalations.state(conversation.session_id) is ConversationState.bot
    answered = await _turn(conversation, "How do I reset the hub?")
    assert answered[-1].decision == "answer"  # type: ignore[attr-defined]
    audit = await chat.router.audit.read(conversation.session_id)
    assert [(e.actor, e.action) for e in audit] == [("customer", "escalate"),
                                                    ("customer", "back_to_bot")]


async def test_claim_message_release_and_the_bot_remembers_the_person(world) -> None:
    chat, retrieval, desk = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    await _turn(conversation, "How do I reset the hub?")
    await conversation.handoff()
    sid = conversation.session_id
    async with conversation.events() as events:
        await anext(events)
        session = await desk.claim("alice", sid)
        joined = await anext(events)
        assert isinstance(joined, AgentJoined) and joined.agent.name == "alice"
        with pytest.raises(ProtocolError) as second:
            await desk.claim("bob", sid)
        assert second.value.code == "already_claimed"
        with pytest.raises(ProtocolError) as foreign:
            await desk.send("bob", sid, "hi, Bob here")
        assert foreign.value.code == "not_claimed"
        with pytest.raises(ProtocolError) as empty:
            await desk.send("alice", sid, "   ")
        assert empty.value.code == "empty_message"
        await desk.send("alice", sid, "Hi, I'm Alice. Which hub model is it?")
        delta = await anext(events)
        assert isinstance(delta, Delta) and delta.source == "human" and "Alice" in delta.text
        assert delta.turn_id is None  # a message of its own, not a bot turn
        assert events.get_nowait() is None
    before = len(retrieval.contexts)
    held = await _turn(conversation, "It's the H2")
    assert _types(held) == ["user_message", "done"] and len(retrieval.contexts) == before
    assert held[-1].cancelled and held[-1].text == ""  # type: ignore[attr-defined]
    suggestion = await desk.suggest(session, "It's the H2", held[0].seq)
    assert suggestion is not None and suggestion["citations"][0]["doc_id"] == "hub-reset"
    assert suggestion["as_of"] and suggestion["type"] == "suggestion"
    view = desk.conversation(session, chat.escalations.get(sid))
    assert [line["role"] for line in view["transcript"]][:2] == ["customer", "bot"]
    assert view["documents"][0]["version"] == 3 and view["reason"] == "customer_request"
    with pytest.raises(ProtocolError) as unclaimed:
        await desk.release("bob", sid)
    assert unclaimed.value.code == "not_claimed"
    async with conversation.events() as events:
        await anext(events)
        await desk.release("alice", sid)
        assert isinstance(await anext(events), AgentLeft)
    assert chat.escalations.state(sid) is ConversationState.bot
    await _turn(conversation, "how long does the reset take?")
    history = retrieval.contexts[-1].history
    assert ("assistant", "Hi, I'm Alice. Which hub model is it?") in history
    assert ("user", "It's the H2") in history
    actions = [(e.actor, e.action) for e in await chat.router.audit.read(sid)]
    assert ("alice", "claim") in actions and ("alice", "message") in actions
    assert ("alice", "release") in actions and ("bob", "refused") in actions


async def test_unknown_and_closed_conversations_are_refused(world) -> None:
    chat, _, desk = world
    with pytest.raises(ProtocolError) as unknown:
        await desk.claim("alice", "0123456789abcdef")
    assert unknown.value.code == "unknown_session"
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    await conversation.handoff()
    await desk.claim("alice", conversation.session_id)
    await desk.close("alice", conversation.session_id)
    assert chat.escalations.state(conversation.session_id) is ConversationState.closed
    with pytest.raises(ProtocolError) as closed:
        await desk.claim("alice", conversation.session_id)
    assert closed.value.code == "not_waiting"
    for raw, code in [("{", "invalid_json"), ('{"type": "nope"}', "unknown_type"),
                      ('{"type": "claim"}', "invalid_message"),
                      ('{"type": "claim", "session_id": "../x"}', "invalid_message"),
                      ('{"type": "message", "session_id": "0123456789abcdef", "text": ""}',
                       "empty_message"),
                      ('{"type": "message", "session_id": "0123456789abcdef", "text": "'
                       + "x" * 4001 + '"}', "message_too_long")]:
        with pytest.raises(ProtocolError) as refused:
            parse_supervisor_message(raw)
        assert refused.value.code == code, raw


async def test_a_long_wait_is_told_once_with_a_way_out(world) -> None:
    chat, _, _ = world
    conversation = await chat.open(Identity.anonymous_customer(), channel="web")
    await chat.escalations.announce("alice", "c1")
    await conversation.handoff()
    async with conversation.events() as events:
        await anext(events)
        assert await chat.tell_timed_out(0.0) == 1
        assert await chat.tell_timed_out(0.0) == 0  # once
        notice = await anext(events)
    assert isinstance(notice, Delta) and notice.source == "system" and notice.turn_id is None
    assert "leave a message" in notice.text and "back to the bot" in notice.text
    kept = await _turn(conversation, "Please call me back tomorrow")
    assert "kept your message" in kept[-1].text  # type: ignore[attr-defined]


def test_console_tokens_never_reach_the_log() -> None:
    import logging

    from channels.console import RedactTokens

    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1,
                               '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5", "/v1/supervisor?token=alice-secret-123&x=1"),
                               None)
    assert RedactTokens().filter(record)
    assert "alice-secret" not in record.getMessage()
    assert "token=<redacted>&x=1" in record.getMessage()
