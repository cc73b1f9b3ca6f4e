"""The OpenAI-compatible generator against a real local HTTP server, and the agent's fallback.

The fake speaks just enough HTTP/1.1 and server-sent events (``data: {...}`` lines with
``choices[0].delta.content``, then ``data: [DONE]``) on ``asyncio.start_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from agents.retrieval import (
    AnswerDelta,
    AnswerFinal,
    ExtractiveGenerator,
    Generator,
    OpenAIChatGenerator,
    PrefetchCache,
    RetrievalAgent,
    TurnContext,
    build_generator,
)
from agents.retrieval.grounding import GroundedGenerator
from agents.retrieval.local_llm import LocalLLMGenerator
from core.errors import GenerationError
from core.settings import CONFIGS_DIR, Settings
from ingest.embeddings import OnnxEmbedder
from ingest.kb import Hit, KnowledgeBase
from ingest.store import Tier
from tests.fakes import TOKENS, FakeLLM

pytestmark = pytest.mark.unit

MakeKb = Callable[..., KnowledgeBase]
AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    server = FakeLLM()
    await server.start()
    yield server
    await server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hit(text: str, doc_id: str = "hub-reset", position: int = 0) -> Hit:
    return Hit(chunk_id=f"{doc_id}:{position}", doc_id=doc_id,
               title="Resetting the Lumora Hub", url=None,
               heading="Resetting the Lumora Hub > Factory reset", text=text, version=3,
               updated_at=AS_OF, source="cms", tier=Tier.hot, relevance=0.8, freshness=1.0,
               score=0.8, position=position)


HITS = [hit("A factory reset erases everything on the hub. Press and hold the reset button on "
            "the back with a paperclip for 15 seconds, until the LED flashes red 3 times. The "
            "factory reset takes about 5 minutes.")]


def generator(llm: FakeLLM, **kwargs: float) -> OpenAIChatGenerator:
    options = {"first_token_timeout_s": 0.5, "total_timeout_s": 5.0, **kwargs}
    return OpenAIChatGenerator(llm.base_url, model="test-model", api_key="sk-test", **options)


async def collect(gen: Generator, question: str = "How do I factory reset the hub?") -> list[str]:
    return [piece async for piece in gen.stream(question, HITS, as_of=AS_OF)]


# -- the generator on its own ----------------------------------------------------------------

async def test_streams_the_content_deltas(llm: FakeLLM) -> None:
    gen = generator(llm)
    try:
        assert await collect(gen) == TOKENS
    finally:
        await gen.aclose()
    request = llm.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer sk-test"
    body = request["json"]
    assert body["stream"] is True and body["model"] == "test-model"
    system, user = body["messages"]
    assert user == {"role": "user", "content": "How do I factory reset the hub?"}
    assert "paperclip" in system["content"] and "[1] Resetting the Lumora Hub" in system["content"]
    assert "version 3" in system["content"] and AS_OF.isoformat() in system["content"]
    assert "only" in system["content"]  # grounded: answer only from the sources


async def test_slow_first_token_raises(llm: FakeLLM) -> None:
    llm.mode = "slow_first_token"
    gen = generator(llm, first_token_timeout_s=0.2)
    try:
        with pytest.raises(GenerationError, match="first-token"):
            await collect(gen)
    finally:
        await gen.aclose()


async def test_slow_response_headers_raise(llm: FakeLLM) -> None:
    llm.mode = "slow_headers"
    gen = generator(llm, first_token_timeout_s=0.2)
    try:
        with pytest.raises(GenerationError, match="in time"):
            await collect(gen)
    finally:
        await gen.aclose()


async def test_server_error_raises(llm: FakeLLM) -> None:
    llm.mode = "500"
    gen = generator(llm)
    try:
        with pytest.raises(GenerationError, match="500") as info:
            await collect(gen)
        assert info.value.retryable
    finally:
        await gen.aclose()


async def test_connection_refused_raises() -> None:
    gen = OpenAIChatGenerator(f"http://127.0.0.1:{free_port()}/v1", first_token_timeout_s=1)
    try:
        with pytest.raises(GenerationError, match="unreachable"):
            await collect(gen)
    finally:
        await gen.aclose()


async def test_total_timeout_after_the_first_token(llm: FakeLLM) -> None:
    llm.mode = "stall"
    gen = generator(llm, total_timeout_s=0.3)
    pieces: list[str] = []
    try:
        with pytest.raises(GenerationError, match="total"):
            async for piece in gen.stream("q", HITS, as_of=AS_OF):
                pieces.append(piece)
    finally:
        await gen.aclose()
    assert pieces == TOKENS[:1]
    await asyncio.wait_for(llm.disconnected.wait(), 5)


def test_build_generator_follows_the_settings(embedder: OnnxEmbedder) -> None:
    plain = build_generator(Settings(_env_file=None, llm_base_url=None), embedder)
    assert isinstance(plain, ExtractiveGenerator)
    checked = build_generator(Settings(_env_file=None, llm_base_url="http://127.0.0.1:9/v1",
                                       llm_model="m", llm_first_token_timeout_s=0.7))
    assert isinstance(checked, GroundedGenerator)
    llm = checked.inner
    assert isinstance(llm, OpenAIChatGenerator)
    assert llm.url == "http://127.0.0.1:9/v1/chat/completions" and llm.model == "m"
    assert llm.first_token_timeout_s == 0.7
    unchecked = build_generator(Settings(_env_file=None, llm_base_url="http://127.0.0.1:9/v1",
                                         grounding_check=False))
    assert isinstance(unchecked, OpenAIChatGenerator)
    local = build_generator(Settings(_env_file=None, generator="local"))
    assert isinstance(local, GroundedGenerator) and isinstance(local.inner, LocalLLMGenerator)


# -- conformance: every generator behaves the same way towards the agent -------------------

@pytest.fixture(params=["extractive", "openai-chat", "openai-chat+grounded"])
async def any_generator(request: pytest.FixtureRequest, llm: FakeLLM,
                        embedder: OnnxEmbedder) -> AsyncIterator[Generator]:
    if request.param == "extractive":
        yield ExtractiveGenerator(embedder)
        return
    gen = generator(llm)
    if request.param.endswith("+grounded"):
        gen = GroundedGenerator(gen)
    yield gen
    await gen.aclose()


async def test_conformance_streams_non_empty_text(any_generator: Generator) -> None:
    assert isinstance(any_generator, Generator)
    pieces = await collect(any_generator)
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces).strip()


async def test_conformance_can_be_closed_mid_stream(any_generator: Generator) -> None:
    stream = any_generator.stream("How do I factory reset the hub?", HITS, as_of=AS_OF)
    assert await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]


async def test_conformance_no_sections_no_invention(any_generator: Generator,
                                                    llm: FakeLLM) -> None:
    if isinstance(any_generator, ExtractiveGenerator):
        assert [p async for p in any_generator.stream("q", [], as_of=None)] == []
    else:  # the sources block is empty: the prompt still says to answer only from it
        with contextlib.suppress(GenerationError):
            [p async for p in any_generator.stream("q", [], as_of=None)]
        assert "Sources:" in llm.requests[-1]["json"]["messages"][0]["content"]


# -- the agent falls back to the extractive answer -------------------------------------------

@pytest.fixture
def small_kb(make_kb: MakeKb) -> KnowledgeBase:
    docs = {name: (CONFIGS_DIR / "sample_kb" / f"{name}.md").read_text(encoding="utf-8")
            for name in ("hub-reset", "pairing-bulbs", "hub-setup")}
    return make_kb(docs)


async def answer(agent: RetrievalAgent, text: str = "How do I factory reset the hub?"
                 ) -> tuple[list[str], AnswerFinal]:
    await agent.warm_up()  # the same keyword snapshot for every agent: comparable answers
    turn = TurnContext("s", text, [], (), PrefetchCache())
    deltas: list[str] = []
    final = None
    async for event in agent.stream(turn):
        if isinstance(event, AnswerDelta):
            deltas.append(event.text)
        else:
            final = event
    assert final is not None
    return deltas, final


async def test_agent_streams_the_llm_answer(small_kb: KnowledgeBase, llm: FakeLLM) -> None:
    async with RetrievalAgent(small_kb, generator=generator(llm)) as agent:
        deltas, final = await answer(agent)
    assert deltas == TOKENS and final.text == "".join(TOKENS)
    assert [c.doc_id for c in final.citations] == ["hub-reset"]
    assert "paperclip" in llm.requests[0]["json"]["messages"][0]["content"]


@pytest.mark.parametrize("mode", ["slow_first_token", "slow_headers", "500", "refused"])
async def test_agent_falls_back_to_the_extractive_answer(
        small_kb: KnowledgeBase, llm: FakeLLM, mode: str,
        caplog: pytest.LogCaptureFixture) -> None:
    async with RetrievalAgent(small_kb) as plain:
        _, expected = await answer(plain)
    llm.mode = mode
    gen = generator(llm, first_token_timeout_s=0.3)
    if mode == "refused":
        gen = OpenAIChatGenerator(f"http://127.0.0.1:{free_port()}/v1", first_token_timeout_s=1)
    with caplog.at_level(logging.WARNING, logger="duet.agents"):
        async with RetrievalAgent(small_kb, generator=gen) as agent:
            deltas, final = await answer(agent)
    assert final.text == expected.text and final.text.strip()
    assert final.text == "".join(deltas)
    assert final.citations == expected.citations
    assert any("extractively" in r.getMessage() for r in caplog.records)


async def test_agent_keeps_a_partial_llm_answer(small_kb: KnowledgeBase, llm: FakeLLM,
                                                caplog: pytest.LogCaptureFixture) -> None:
    llm.mode = "stall"
    with caplog.at_level(logging.WARNING, logger="duet.agents"):
        async with RetrievalAgent(small_kb, generator=generator(llm, total_timeout_s=0.3)) as agent:
            deltas, final = await answer(agent)
    assert deltas == TOKENS[:1] and final.text == TOKENS[0]
    assert any("generator failed" in r.getMessage() for r in caplog.records)


async def test_cancelling_a_turn_hangs_up_on_the_llm(small_kb: KnowledgeBase,
                                                    llm: FakeLLM) -> None:
    llm.mode = "stall"
    first = asyncio.Event()
    async with RetrievalAgent(small_kb, generator=generator(llm)) as agent:

        async def consume() -> None:
            turn = TurnContext("s", "How do I factory reset the hub?", [], (), PrefetchCache())
            async with contextlib.aclosing(agent.stream(turn)) as stream:
                async for _ in stream:
                    first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(llm.disconnected.wait(), 5)
    assert [t for t in asyncio.all_tasks()
            if t is not asyncio.current_task() and t not in llm._handlers] == []
