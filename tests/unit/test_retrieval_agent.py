"""The retrieval agent end to end on the sample KB: a real LangGraph graph, real embeddings."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from agents.escalation import EscalationFlag
from agents.retrieval import (
    NODES,
    AnswerDelta,
    AnswerFinal,
    DecisionPolicy,
    Journeys,
    PrefetchCache,
    RetrievalAgent,
    TurnContext,
)
from core.settings import CONFIGS_DIR
from ingest.chunking import chunk_markdown
from ingest.embeddings import OnnxEmbedder
from ingest.freshness import FreshnessProfiles
from ingest.kb import KnowledgeBase, chunk_metadata
from ingest.store import ChromaStore, StoredChunk, Tier

pytestmark = pytest.mark.unit

MakeKb = Callable[..., KnowledgeBase]

AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SAMPLE = {p.stem: p.read_text(encoding="utf-8")
          for p in sorted((CONFIGS_DIR / "sample_kb").glob("*.md"))}


@pytest.fixture(scope="module")
def sample_kb(embedder: OnnxEmbedder, tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    """The 24 sample articles, indexed once for the module (embedding them takes seconds)."""
    path: Path = tmp_path_factory.mktemp("sample-kb")
    store = ChromaStore(path=path / "chroma", prefix="sample")
    for doc_id, text in SAMPLE.items():
        chunks = chunk_markdown(doc_id, text)
        vectors = embedder.embed([c.embed_text for c in chunks])
        title = chunks[0].heading.split(" > ")[0]
        store.upsert(Tier.hot, [
            StoredChunk(c.chunk_id, c.text, chunk_metadata(
                doc_id=doc_id, version=2, title=title, url=f"https://help.example/{doc_id}",
                heading=c.heading, source="cms", acl=["public"], reviewed=True,
                updated_at=AS_OF, position=c.position), vectors[i])
            for i, c in enumerate(chunks)
        ])
    return KnowledgeBase(store, embedder, FreshnessProfiles(), as_of=lambda: AS_OF)


@pytest.fixture
async def agent(sample_kb: KnowledgeBase):
    agent = RetrievalAgent(sample_kb, journeys=Journeys.load())
    await agent.warm_up()
    yield agent
    await agent.aclose()


class Session:
    """A scripted conversation: one cache, a growing history."""

    def __init__(self, agent: RetrievalAgent, groups: tuple[str, ...] = ()) -> None:
        self.agent = agent
        self.groups = groups
        self.cache = PrefetchCache()
        self.history: list[tuple[str, str]] = []

    async def ask(self, text: str, *, prefetch: bool = False,
                  flags: tuple[EscalationFlag, ...] = ()) -> tuple[list[str], AnswerFinal]:
        turn = TurnContext("s1", text, list(self.history), self.groups, self.cache, flags)
        deltas: list[str] = []
        finals: list[AnswerFinal] = []
        async for event in self.agent.stream(turn):
            if isinstance(event, AnswerDelta):
                assert not finals, "a delta after the final"
                deltas.append(event.text)
            else:
                finals.append(event)
        assert len(finals) == 1
        final = finals[0]
        self.history += [("user", text), ("assistant", final.text)]
        if prefetch:
            await self.agent.prefetch(turn, final)
        return deltas, final


def cited(final: AnswerFinal) -> list[str]:
    return [c.doc_id for c in final.citations]


def test_the_agent_is_a_langgraph_state_graph_with_five_nodes(sample_kb: KnowledgeBase) -> None:
    agent = RetrievalAgent(sample_kb)
    try:
        assert isinstance(agent.graph, CompiledStateGraph)
        assert isinstance(agent.graph.builder, StateGraph)
        assert NODES == ("contextualize", "retrieve", "decide", "generate", "prefetch")
        assert set(agent.graph.get_graph().nodes) == {"__start__", "__end__", *NODES}
        edges = {(e.source, e.target) for e in agent.graph.get_graph().edges}
        assert {("contextualize", "retrieve"), ("retrieve", "decide"),
                ("decide", "generate"), ("generate", "prefetch")} <= edges
    finally:
        agent.keyword.close()


async def test_streams_sentences_then_one_final(agent: RetrievalAgent) -> None:
    deltas, final = await Session(agent).ask("How do I factory reset the hub?")
    assert len(deltas) >= 2
    assert final.text == "".join(deltas)
    assert final.decision == "answer" and final.confidence >= 0.8
    assert cited(final)[0] == "hub-reset"
    assert "factory reset" in final.text.lower()
    assert final.as_of == AS_OF
    assert final.escalate_reason is None and not final.prefetch_hit
    assert final.hits and final.hits[0].doc_id == "hub-reset"
    citation = final.citations[0]
    assert citation.title == "Resetting the Lumora Hub"
    assert citation.url == "https://help.example/hub-reset"
    assert (citation.version, citation.updated_at) == (2, AS_OF)


async def test_follow_up_is_rewritten_with_the_previous_topic(agent: RetrievalAgent) -> None:
    session = Session(agent)
    await session.ask("How do I reset the hub?")
    _, final = await session.ask("how long does that take?")
    assert "hub" in final.rewritten_query.lower()
    assert cited(final)[0] == "hub-reset"
    assert "minute" in final.text


async def test_object_pronoun_gets_the_entity(agent: RetrievalAgent) -> None:
    session = Session(agent)
    await session.ask("My hub is stuck on a solid red light")
    _, final = await session.ask("how do I reset it?")
    assert re.fullmatch(r"how do I reset (the|my) hub\?", final.rewritten_query)
    assert cited(final)[0] == "hub-reset"


async def test_follow_up_from_history_alone(agent: RetrievalAgent) -> None:
    session = Session(agent)  # a fresh cache: no topic memory, only the transcript
    session.history = [("user", "What is your return window?"),
                       ("assistant", "You can return any Lumora product within 30 days.")]
    _, final = await session.ask("and for opened ones?")
    assert "return" in final.rewritten_query.lower()
    assert cited(final)[0] == "returns-policy"
    assert "restocking" in final.text or "Opened items" in final.text


async def test_a_new_topic_starts_fresh(agent: RetrievalAgent) -> None:
    session = Session(agent)
    await session.ask("How do I reset the hub?")
    await session.ask("how long does that take?")
    _, final = await session.ask("also, my bulbs won't pair")
    assert final.rewritten_query == "also, my bulbs won't pair"
    assert cited(final)[0] == "pairing-bulbs"


async def test_unknown_question_degrades_gracefully(agent: RetrievalAgent) -> None:
    deltas, final = await Session(agent).ask("do you sell lawnmowers?")
    assert final.decision == "fallback"
    assert final.confidence < 0.25
    assert final.citations == []
    assert "lawnmowers" in final.text and "person" in final.text
    assert not re.search(r"\d|\$", final.text)  # nothing invented: no prices, no numbers
    assert final.escalate_reason == EscalationFlag.not_found.value
    assert final.text == "".join(deltas) and len(deltas) >= 2


async def test_low_confidence_gives_partial_information(sample_kb: KnowledgeBase) -> None:
    strict = RetrievalAgent(sample_kb, decision=DecisionPolicy(fallback_below=1.0))
    try:
        _, final = await Session(strict).ask("How do I reset the hub?")
    finally:
        await strict.aclose()
    assert final.decision == "fallback"
    assert cited(final) == ["hub-reset"]
    assert "Resetting the Lumora Hub" in final.text and "person" in final.text
    assert final.escalate_reason == EscalationFlag.low_confidence.value


async def test_vague_question_is_clarified_and_the_reply_completes_it(
        agent: RetrievalAgent) -> None:
    session = Session(agent)
    _, question = await session.ask("how do I reset it?")
    assert question.decision == "clarify"
    assert "Resetting the Lumora Hub" in question.text and "Resetting a Bulb" in question.text
    assert question.escalate_reason is None
    _, final = await session.ask("the hub")
    assert final.rewritten_query == "how do I reset the hub?"
    assert final.decision == "answer" and cited(final)[0] == "hub-reset"


async def test_prefetch_answers_the_journey_from_cache(agent: RetrievalAgent) -> None:
    session = Session(agent)
    _, first = await session.ask("How do I reset the hub?", prefetch=True)
    assert not first.prefetch_hit
    assert {"hub-reset", "pairing-bulbs", "hub-setup"} <= session.cache.doc_ids
    deltas, final = await session.ask("Now my bulbs won't pair")
    assert final.prefetch_hit
    assert session.cache.hits == 1
    assert cited(final)[0] == "pairing-bulbs"
    assert deltas and final.text == "".join(deltas)
    assert final.as_of == AS_OF


async def test_prefetch_plans_cited_then_journeys_then_co_retrieved(
        agent: RetrievalAgent) -> None:
    other = Session(agent)
    await other.ask("How do I reset the hub?")
    await other.ask("Does Lumora work with Alexa?")  # sessions pair hub-reset with voice
    session = Session(agent)
    _, final = await session.ask("How do I reset the hub?")
    plan = agent.prefetcher.plan(final, session.cache)
    assert plan[0] == "hub-reset"
    assert plan[1:4] == list(Journeys.load().next("hub-reset")[:3])
    assert "voice-assistants" in plan


async def test_full_mode_streams_the_final_before_prefetch_starts(
        agent: RetrievalAgent) -> None:
    cache = PrefetchCache()
    turn = TurnContext("s1", "How do I reset the hub?", [], (), cache)
    order: list[str] = []
    async for mode, chunk in agent.graph.astream({"mode": "full"}, context=turn,
                                                 stream_mode=["custom", "updates"]):
        if mode == "custom":
            order.append(type(chunk).__name__)
        else:
            order.extend(chunk)
    assert order.index("AnswerFinal") < order.index("prefetch")
    assert order[-1] == "prefetch" and len(cache) > 0


async def test_small_talk_keeps_the_topic(agent: RetrievalAgent) -> None:
    session = Session(agent)
    await session.ask("How do I reset the hub?")
    _, thanks = await session.ask("thanks!")
    assert thanks.citations == [] and "welcome" in thanks.text
    _, final = await session.ask("how long does that take?")
    assert "hub" in final.rewritten_query.lower() and cited(final)[0] == "hub-reset"


async def test_exact_identifiers_find_their_document(agent: RetrievalAgent) -> None:
    _, final = await Session(agent).ask("where is order LUM-4821937")
    assert cited(final)[0] == "order-tracking"


async def test_escalation_reason_from_the_turn_flags(agent: RetrievalAgent) -> None:
    _, final = await Session(agent).ask("How do I reset the hub?",
                                        flags=(EscalationFlag.human_request,))
    assert final.decision == "answer" and final.escalate_reason == "human_request"
    _, final = await Session(agent).ask("I'll sue you if my refund isn't here")
    assert final.escalate_reason == "legal"


async def test_closing_the_stream_early_leaves_no_tasks(agent: RetrievalAgent) -> None:
    turn = TurnContext("s1", "How do I pair a bulb?", [], (), PrefetchCache())
    stream = agent.stream(turn)
    first = await anext(stream)
    assert isinstance(first, AnswerDelta)
    await stream.aclose()
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


def _others() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


@pytest.mark.parametrize("closing", [True, False], ids=["aclosing", "plain-async-for"])
async def test_cancelling_the_turn_leaves_no_tasks(agent: RetrievalAgent, closing: bool) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        turn = TurnContext("s1", "How do I pair a bulb?", [], (), PrefetchCache())
        stream = agent.stream(turn)
        async with contextlib.aclosing(stream) if closing else contextlib.nullcontext(stream):
            async for _ in stream:
                started.set()
                await asyncio.sleep(10)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if closing:  # closed by the consumer: everything is gone at once
        await asyncio.sleep(0)
        assert _others() == []
    else:  # left to the event loop's async-generator finalizer: gone right after
        for _ in range(100):
            if not _others():
                break
            await asyncio.sleep(0.01)
        assert _others() == []


async def test_acl_restricted_documents(make_kb: MakeKb) -> None:
    make_kb({k: SAMPLE[k] for k in ("hub-setup", "hub-reset", "pairing-bulbs")})
    kb = make_kb({"hub-diagnostics": (
        "# Hub Diagnostics Mode\n\n## Entering diagnostics mode\nTo enter hub diagnostics mode, "
        "hold the reset button and the power button together for 30 seconds until the LED "
        "cycles purple. Diagnostics mode shows radio signal levels for every paired device.\n")},
        acl=["staff"])
    async with RetrievalAgent(kb) as agent:
        await agent.warm_up()
        question = "How do I enter hub diagnostics mode?"
        _, public = await Session(agent).ask(question)
        assert "hub-diagnostics" not in cited(public)
        assert all(h.doc_id != "hub-diagnostics" for h in public.hits)
        assert "purple" not in public.text
        _, staff = await Session(agent, groups=("staff",)).ask(question)
        assert cited(staff)[0] == "hub-diagnostics" and "purple" in staff.text


async def test_citations_carry_version_and_update_time(make_kb: MakeKb) -> None:
    stamp = datetime(2025, 11, 21, 10, 0, tzinfo=UTC)
    kb = make_kb({"warranty": SAMPLE["warranty"]}, version=7, updated_at=stamp)
    async with RetrievalAgent(kb) as agent:
        _, final = await Session(agent).ask("How long is the warranty on the hub?")
    citation = final.citations[0]
    assert (citation.doc_id, citation.version, citation.updated_at) == ("warranty", 7, stamp)
    assert citation.title == "Warranty"
