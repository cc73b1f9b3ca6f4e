"""The extractive generator quotes the right sentences, in order, and invents nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from agents.retrieval import ExtractiveGenerator
from agents.text import split_sentences
from ingest.embeddings import OnnxEmbedder
from ingest.kb import Hit
from ingest.store import Tier

pytestmark = pytest.mark.unit

STAMP = datetime(2026, 3, 1, tzinfo=UTC)
FACTORY = ("A factory reset erases everything on the hub: paired devices, rooms, scenes, "
           "schedules and automations. Press and hold the reset button on the back with a "
           "paperclip for 15 seconds, until the LED flashes red 3 times, then release it. The "
           "factory reset takes about 5 minutes; do not unplug the hub during this time. When "
           "the LED blinks blue, the hub is back in setup mode.")
RESTART = ("Most hub problems are fixed by a simple restart, which keeps all your settings. "
           "Unplug the hub from power, wait 10 seconds, and plug it back in.")
PAIRING = ("Screw in the bulb and turn on the wall switch. In the Lumora app, tap Add device > "
           "Bulb, and the app searches for new bulbs for up to 2 minutes.")


def hit(text: str, doc_id: str, position: int, score: float) -> Hit:
    return Hit(chunk_id=f"{doc_id}:{position}", doc_id=doc_id, title=doc_id, url=None,
               heading=f"{doc_id} > section {position}", text=text, version=1, updated_at=STAMP,
               source="cms", tier=Tier.hot, relevance=score, freshness=1.0, score=score,
               position=position)


HITS = [hit(FACTORY, "hub-reset", 2, 0.72), hit(RESTART, "hub-reset", 0, 0.63),
        hit(PAIRING, "pairing-bulbs", 0, 0.40)]


class CountingEmbedder:
    """The real model, counting batch calls."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.batches = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.batches += 1
        return self.inner.embed(texts)

    def embed_one(self, text: str) -> np.ndarray:
        return self.inner.embed_one(text)


@pytest.fixture
def extractive(embedder: OnnxEmbedder) -> ExtractiveGenerator:
    return ExtractiveGenerator(embedder)


def test_quotes_two_to_four_sentences_verbatim_in_reading_order(
        extractive: ExtractiveGenerator) -> None:
    picked = extractive.select("How long does a factory reset take?", HITS)
    assert 2 <= len(picked) <= 4
    sources = {s for h in HITS for s in split_sentences(h.text)}
    assert all(p.text in sources for p in picked)
    assert [p.order for p in picked] == sorted(p.order for p in picked)
    assert any("about 5 minutes" in p.text for p in picked)


def test_how_questions_prefer_steps(extractive: ExtractiveGenerator) -> None:
    picked = extractive.select("How do I factory reset the hub?", HITS)
    assert any(p.text.startswith("Press and hold") for p in picked)


def test_limit_and_empty_input(extractive: ExtractiveGenerator) -> None:
    assert len(extractive.select("How long does a factory reset take?", HITS, limit=1)) == 1
    assert extractive.select("anything", []) == []


def test_reads_at_most_two_sections_per_document(extractive: ExtractiveGenerator) -> None:
    many = [hit(f"Sentence number {i} about the hub reset.", "hub-reset", i, 0.5)
            for i in range(5)]
    picked = extractive.select("hub reset", many)
    assert {p.chunk_id for p in picked} <= {"hub-reset:0", "hub-reset:1"}


async def test_streams_sentence_by_sentence(extractive: ExtractiveGenerator) -> None:
    pieces = [p async for p in extractive.stream("How long does a factory reset take?", HITS,
                                                 as_of=STAMP)]
    picked = extractive.select("How long does a factory reset take?", HITS)
    assert pieces == [picked[0].text] + [f" {p.text}" for p in picked[1:]]


def test_sentence_vectors_are_cached_and_can_be_warmed(embedder: OnnxEmbedder) -> None:
    counting = CountingEmbedder(embedder)
    extractive = ExtractiveGenerator(counting)  # type: ignore[arg-type]
    extractive.warm(HITS)
    warmed = counting.batches
    assert warmed == len(HITS)
    extractive.select("How long does a factory reset take?", HITS)
    extractive.select("How do I pair a bulb?", HITS)
    assert counting.batches == warmed


def test_an_unbound_generator_adopts_an_embedder(embedder: OnnxEmbedder) -> None:
    unbound = ExtractiveGenerator(max_sentences=3)
    assert not unbound.bound
    with pytest.raises(RuntimeError):
        unbound.select("q", HITS)
    bound = unbound.bind(embedder)
    assert bound.bound and bound.max_sentences == 3
    assert bound.bind(embedder) is bound
    assert bound.select("How long does a factory reset take?", HITS)


def test_turns_missing_on_one_chunk_at_once_share_one_embedding(embedder: OnnxEmbedder) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    class Slow(CountingEmbedder):
        def embed(self, texts: list[str]) -> np.ndarray:
            time.sleep(0.3)  # a slow inference: the other threads arrive while it runs
            return super().embed(texts)

    model = Slow(embedder)
    generator = ExtractiveGenerator(model)  # type: ignore[arg-type]
    barrier = threading.Barrier(4)

    def read(_: int) -> tuple[list[str], np.ndarray]:
        barrier.wait()
        return generator.sentences(HITS[0])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read, range(4)))
    assert model.batches == 1
    assert all(r[0] == results[0][0] and r[1] is results[0][1] for r in results)
    assert generator.sentences(HITS[0])[1] is results[0][1]  # and it is cached
    assert model.batches == 1
