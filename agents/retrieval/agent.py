"""The retrieval agent: a streaming, grounded answer for one turn, then a prefetch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

from agents.escalation import EscalationPolicy
from agents.retrieval.contextualize import ContextPolicy, ContextualizeNode, Contextualizer
from agents.retrieval.decide import DecideNode, DecisionPolicy
from agents.retrieval.generate import GenerateNode
from agents.retrieval.generators import ExtractiveGenerator, Generator
from agents.retrieval.graph import build_graph
from agents.retrieval.hybrid import FusionWeights, KeywordIndex
from agents.retrieval.journeys import Journeys
from agents.retrieval.names import NameCheck
from agents.retrieval.prefetch import CoRetrieval, PrefetchNode
from agents.retrieval.rerank import PassageReranker
from agents.retrieval.retrieve import RetrieveNode
from agents.retrieval.titles import TitleBlend
from agents.retrieval.turn import AnswerDelta, AnswerFinal, TurnContext
from core.metrics import Metrics
from ingest.kb import KnowledgeBase

__all__ = ["RetrievalAgent"]


class RetrievalAgent:
    """Answers turns from the knowledge base through a LangGraph graph (see ``graph.py``)."""

    def __init__(self, kb: KnowledgeBase, *, generator: Generator | None = None,
                 journeys: Journeys | None = None, policy: EscalationPolicy | None = None,
                 decision: DecisionPolicy | None = None, context: ContextPolicy | None = None,
                 fusion: FusionWeights | None = None, metrics: Metrics | None = None,
                 search_k: int = 16, rerank: PassageReranker | bool = False) -> None:
        self.kb = kb
        self.keyword = KeywordIndex(kb)
        self.extractive = ExtractiveGenerator(kb.embedder)
        if generator is None:
            generator = self.extractive
        elif isinstance(generator, ExtractiveGenerator):
            generator = generator.bind(kb.embedder)
        self.generator = generator
        # Passage re-ranking is opt-in (DUET_RERANK_PASSAGES): docs/answers.md has its cost.
        if rerank is True:
            rerank = PassageReranker(self.extractive, titles=TitleBlend(kb.embedder),
                                     document_share=self.keyword.document_share)
        self.reranker = rerank or None
        self.journeys = journeys if journeys is not None else Journeys()
        self.co_retrieval = CoRetrieval()
        terms = lambda: self.keyword.title_terms  # noqa: E731 - read the latest snapshot
        self.prefetcher = PrefetchNode(kb, self.journeys, self.co_retrieval, self.extractive)
        self.graph = build_graph(
            contextualize=ContextualizeNode(
                Contextualizer(kb, terms, context or ContextPolicy(), search_k=search_k)),
            retrieve=RetrieveNode(kb, self.keyword, k=search_k, weights=fusion, metrics=metrics,
                                  passages=self.reranker),
            decide=DecideNode(kb.embedder, terms, policy=decision or DecisionPolicy(),
                              escalation=policy,
                              names=NameCheck(self.keyword.knows, self.keyword.document_share,
                                              self.keyword.document_has)),
            generate=GenerateNode(generator, self.extractive, self.co_retrieval),
            prefetch=self.prefetcher,
        )

    async def warm_up(self) -> None:
        """Build the keyword index and load a local model now (start-up), not on a turn."""
        await asyncio.to_thread(self.keyword.rebuild)
        warm = getattr(self.generator, "warm_up", None)
        if warm is not None:
            await warm()

    async def stream(self, turn: TurnContext) -> AsyncIterator[AnswerDelta | AnswerFinal]:
        """The answer's pieces in order, then exactly one :class:`AnswerFinal`.

        Closing or cancelling the iteration stops the graph (and an LLM request) at once.
        """
        self.keyword.refresh()
        chunks = self.graph.astream({"mode": "turn"}, context=turn, stream_mode="custom")
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if isinstance(chunk, AnswerDelta | AnswerFinal):
                    yield chunk

    async def prefetch(self, turn: TurnContext, final: AnswerFinal) -> None:
        """Load the likely next documents into ``turn.cache`` (schedule it after the turn)."""
        await self.graph.ainvoke({"mode": "prefetch", "final": final}, context=turn)

    async def aclose(self) -> None:
        """Stop the index's rebuild thread and close the generator's connections."""
        self.keyword.close()
        aclose = getattr(self.generator, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> RetrievalAgent:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
