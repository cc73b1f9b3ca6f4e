"""The retrieve step: the session's prefetch cache first, else hybrid search of the KB."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from langgraph.runtime import Runtime

from agents.retrieval.contextualize import Rewrite
from agents.retrieval.hybrid import (
    FusionWeights,
    KeywordIndex,
    ScoredHit,
    fuse,
    keyword_candidates,
    rank_documents,
    rescore,
)
from agents.retrieval.rerank import PassageReranker
from agents.retrieval.state import RetrievalState
from agents.retrieval.titles import TitleBlend, hits_in_document_order
from agents.retrieval.turn import TurnContext
from core.metrics import Metrics
from ingest.kb import KnowledgeBase, SearchResult

__all__ = ["RetrieveNode"]


class RetrieveNode:
    """Graph node: ranked documents for the rewritten query (cache hit or search)."""

    def __init__(self, kb: KnowledgeBase, keyword: KeywordIndex, *, k: int = 16,
                 weights: FusionWeights | None = None, metrics: Metrics | None = None,
                 passages: PassageReranker | None = None) -> None:
        self._kb = kb
        self._keyword = keyword
        self._k = k
        self._weights = weights or FusionWeights()
        self._metrics = metrics
        self._titles = TitleBlend(kb.embedder)
        self._passages = passages

    async def __call__(self, state: RetrievalState, runtime: Runtime[TurnContext]) -> dict:
        turn = runtime.context
        rewrite = state["rewrite"]
        if rewrite.kind == "social":
            return {"ranked": [], "hits": [], "as_of": self._kb.as_of, "prefetch_hit": False}
        vector = await asyncio.to_thread(self._kb.embedder.embed_one, rewrite.query)
        cached = turn.cache.lookup(vector, groups=turn.groups, changed_at=self._kb.changed_at)
        if self._metrics is not None:
            self._metrics.prefetch.labels(result="hit" if cached else "miss").inc()
        if cached is not None:
            now = time.time()
            scored = fuse([rescore(self._kb, hit, sim, now=now) for hit, sim in cached], None)
            # every cached chunk's document is unchanged since it was loaded: current as of now
            if self._passages is None:  # titles are cached: cheap enough for the loop
                return self._result(rewrite.query, vector, scored, self._kb.as_of,
                                    prefetch_hit=True)
            return await asyncio.to_thread(self._result, rewrite.query, vector, scored,
                                           self._kb.as_of, prefetch_hit=True)
        if turn.on_search is not None:
            turn.on_search()

        def search_and_rank() -> dict:
            result, scored = self._search(rewrite, vector, turn.groups)
            return self._result(rewrite.query, vector, scored, result.as_of, prefetch_hit=False)

        return await asyncio.to_thread(search_and_rank)

    def _search(self, rewrite: Rewrite, vector: np.ndarray,
                groups: tuple[str, ...]) -> tuple[SearchResult, list[ScoredHit]]:
        """Dense search (or the contextualize probe), BM25 tie-breaks (blocking)."""
        probe = rewrite.probe
        if probe is not None and rewrite.kind in ("fresh", "pivot"):
            result = probe
        else:
            result = self._kb.search_vector(vector, k=self._k, groups=groups)
        hits = list(result.hits)
        keyword = self._keyword.query(rewrite.query)
        if keyword is not None and keyword.identifier and self._weights.extra_candidates:
            hits += keyword_candidates(self._kb, keyword, vector,
                                       exclude=[h.chunk_id for h in hits], groups=groups,
                                       n=self._weights.extra_candidates)
        return result, fuse(hits, keyword, self._weights)

    def _result(self, query: str, vector: np.ndarray, scored: list[ScoredHit], as_of: object,
                *, prefetch_hit: bool) -> dict:
        """Documents ranked: chunks grouped, titles blended, passages re-scored (blocking)."""
        ranked = self._titles.rerank(rank_documents(scored), vector)
        if self._passages is not None:
            ranked = self._passages.rerank(query, vector, ranked)
        return {"vector": vector, "ranked": ranked,
                "hits": hits_in_document_order(scored, ranked)[:8], "as_of": as_of,
                "prefetch_hit": prefetch_hit}
