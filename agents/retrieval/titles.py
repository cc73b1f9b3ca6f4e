"""Title evidence in the document ranking.

A chunk is embedded as "Title > Section" plus its text, so a document's title never counts
on its own, yet a title that is a whole question (a FAQ thread, a how-to) is often the best
single match for a paraphrased query (MEASURED.md: the question field alone beat question
and answers together on StackFAQ). The candidate documents' scores are blended with the
similarity of their title to the query: a question-like title (ends in "?" or has 8 or
more words) gets half the weight, a topic title ("Returns Policy") a fifth.
StackFAQ MRR@10 0.966 → 0.976; the sample KB's 218 intent examples 0.903 → 0.905.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from agents.retrieval.hybrid import DocScore, ScoredHit
from ingest.embeddings import Embedder

__all__ = ["TitleBlend"]


class TitleBlend:
    """Re-ranks candidate documents with their titles' similarity to the query (blocking)."""

    def __init__(self, embedder: Embedder, *, question_share: float = 0.5,
                 topic_share: float = 0.2, cache_size: int = 8192) -> None:
        self._embedder = embedder
        self.question_share = question_share
        self.topic_share = topic_share
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def share(self, title: str) -> float:
        """The weight of a title: more for a question-like one."""
        title = title.strip()
        question = title.endswith("?") or len(title.split()) >= 8
        return self.question_share if question else self.topic_share

    def vectors(self, titles: Sequence[str]) -> np.ndarray:
        """Title embeddings, the unseen ones embedded in one batch."""
        with self._lock:
            missing = [t for t in dict.fromkeys(titles) if t not in self._cache]
        if missing:
            fresh = self._embedder.embed(missing)
            with self._lock:
                for title, vector in zip(missing, fresh, strict=True):
                    self._cache[title] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            out = []
            for title in titles:
                vector = self._cache.get(title)
                if vector is None:  # evicted meanwhile by a burst of other titles
                    vector = self._embedder.embed([title])[0]
                else:
                    self._cache.move_to_end(title)
                out.append(vector)
        return np.stack(out)

    def rerank(self, docs: Sequence[DocScore], query: np.ndarray) -> list[DocScore]:
        """The documents by blended score, best first."""
        if not docs:
            return []
        sims = self.vectors([d.title for d in docs]) @ np.asarray(query, dtype=np.float32)
        blended = []
        for doc, sim in zip(docs, sims, strict=True):
            share = self.share(doc.title) if doc.title else 0.0
            blended.append(dataclasses.replace(
                doc, fused=share * float(sim) + (1 - share) * doc.fused))
        return sorted(blended, key=lambda d: d.fused, reverse=True)


def hits_in_document_order(scored: Sequence[ScoredHit], ranked: Sequence[DocScore]) -> list:
    """Chunks grouped by their document's rank, best chunk first within a document."""
    rank = {d.doc_id: i for i, d in enumerate(ranked)}
    ordered = sorted(scored, key=lambda s: (rank.get(s.hit.doc_id, len(rank)), -s.fused))
    return [s.hit for s in ordered]
