"""The prefetch step: load the likely next documents into the session's cache.

After a turn is answered, the documents a follow-up most likely needs are, in order:
the cited documents themselves (all their sections, not only the retrieved ones), the
journeys of the top one (``configs/journeys.yaml``) and the documents other sessions
asked about together with it (:class:`CoRetrieval`). Their chunks come from the
knowledge base with the customer's ACL, their vectors from the store (no re-embedding;
chunks stored without one are embedded here), and their sentences are embedded for the
extractive generator, so a cache hit next turn costs one query embedding.

It never delays an answer: the graph runs it after the final record is written, and
the gateway schedules :meth:`RetrievalAgent.prefetch` after the turn.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from langgraph.runtime import Runtime

from agents.retrieval.cache import PrefetchCache
from agents.retrieval.generators import ExtractiveGenerator
from agents.retrieval.journeys import Journeys
from agents.retrieval.turn import AnswerFinal, TurnContext
from ingest.kb import Hit, KnowledgeBase
from ingest.store import Tier

__all__ = ["CoRetrieval", "PrefetchNode"]


class CoRetrieval:
    """How often sessions cited two documents together (in memory, bounded)."""

    def __init__(self, *, max_docs: int = 10_000, max_related: int = 32) -> None:
        self._pairs: OrderedDict[str, Counter[str]] = OrderedDict()
        self._max_docs = max_docs
        self._max_related = max_related

    def record(self, earlier: Iterable[str], new: Iterable[str]) -> None:
        """Count each newly cited document with those cited before it in the session."""
        earlier = list(dict.fromkeys(earlier))
        for doc in dict.fromkeys(new):
            for other in earlier:
                if other != doc:
                    self._bump(doc, other)
                    self._bump(other, doc)

    def related(self, doc_id: str, n: int) -> list[str]:
        """The ``n`` documents most often cited together with ``doc_id``."""
        counts = self._pairs.get(doc_id)
        return [d for d, _ in counts.most_common(n)] if counts else []

    def _bump(self, a: str, b: str) -> None:
        counts = self._pairs.setdefault(a, Counter())
        self._pairs.move_to_end(a)
        counts[b] += 1
        if len(counts) > self._max_related:
            for doc, _ in counts.most_common()[self._max_related:]:
                del counts[doc]
        while len(self._pairs) > self._max_docs:
            self._pairs.popitem(last=False)


class PrefetchNode:
    """Graph node: loads the likely next documents into the session's cache."""

    def __init__(self, kb: KnowledgeBase, journeys: Journeys, co_retrieval: CoRetrieval,
                 extractive: ExtractiveGenerator, *, max_docs: int = 6, journey_docs: int = 3,
                 related_docs: int = 2) -> None:
        self._kb = kb
        self._journeys = journeys
        self._co = co_retrieval
        self._extractive = extractive
        self.max_docs = max_docs
        self.journey_docs = journey_docs
        self.related_docs = related_docs

    def plan(self, final: AnswerFinal, cache: PrefetchCache) -> list[str]:
        """Documents to load, most likely first, without those already cached."""
        seeds = [c.doc_id for c in final.citations]
        if not seeds and final.decision == "clarify":
            seeds = list(dict.fromkeys(h.doc_id for h in final.hits))[:2]
        if not seeds:
            return []
        plan = list(seeds)
        plan += self._journeys.next(seeds[0])[: self.journey_docs]
        plan += self._co.related(seeds[0], self.related_docs)
        cached = cache.doc_ids
        return [d for d in dict.fromkeys(plan) if d not in cached][: self.max_docs]

    async def __call__(self, state: dict, runtime: Runtime[TurnContext]) -> dict:
        turn = runtime.context
        doc_ids = self.plan(state["final"], turn.cache)
        if not doc_ids:
            return {"prefetched": []}
        as_of = self._kb.as_of
        loaded_at = time.monotonic()  # before reading: a change during the read invalidates
        hits, vectors = await asyncio.to_thread(self._load, doc_ids, turn.groups)
        if hits:
            turn.cache.add(hits, vectors, groups=turn.groups, as_of=as_of, loaded_at=loaded_at)
        return {"prefetched": sorted({h.doc_id for h in hits})}

    def _load(self, doc_ids: Sequence[str], groups: Sequence[str]) -> tuple[list[Hit], np.ndarray]:
        """Chunks with their stored vectors, sentences embedded (blocking)."""
        hits = self._kb.documents(doc_ids, groups=groups)
        vectors: dict[str, np.ndarray] = {}
        for tier in Tier:
            ids = [h.chunk_id for h in hits if h.tier == tier]
            for chunk in self._kb.store.get(tier, ids, embeddings=True):
                if chunk.embedding is not None:
                    vectors[chunk.chunk_id] = chunk.embedding
        missing = [h for h in hits if h.chunk_id not in vectors]
        if missing:
            embedded = self._kb.embedder.embed(
                [f"{h.heading}\n{h.text}" if h.heading else h.text for h in missing])
            vectors.update({h.chunk_id: v for h, v in zip(missing, embedded, strict=True)})
        self._extractive.warm(hits)
        matrix = np.stack([vectors[h.chunk_id] for h in hits]) if hits else np.zeros((0, 1))
        return hits, matrix
