"""Second-stage ranking at passage level: a short exact passage beats a long near-topic article.

The first stage scores a document by its best *chunk* (a whole section, embedded with
its heading) plus BM25 and title evidence. A long article that mentions the product
everywhere can win that way over the short article that holds the one sentence or
table row the customer asked about. The second stage re-scores the first stage's top
``docs`` documents by their best *passage* — a sentence, a list item or a table row with
its header, from their best ``chunks_per_doc`` chunks::

    passage = cos(query, passage) + keyword_weight × the query's keywords found in the
              passage and its heading, each weighted by its rarity in the knowledge
              base (log(1 + 1/document share)), over all of them
    score   = (1 - weight) × first-stage score + weight × best passage

with the bi-encoder the knowledge base already uses (no cross-encoder ships in a
package; MEASURED.md found passage-level bi-encoder scores with keyword evidence
ranked every test pair right). A question-like title is one of its document's passages (for
a FAQ it is the question itself). Passage vectors are the extractive generator's (one
cache, keyed by chunk id, which hashes the text), so the passages the answer will quote
are embedded once; a cold chunk costs one batch embedding of its passages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from agents.retrieval.generators import ExtractiveGenerator
from agents.retrieval.hybrid import DocScore
from agents.retrieval.titles import TitleBlend
from agents.text import keyword_tokens

__all__ = ["PassageReranker"]


class PassageReranker:
    """Re-scores the top documents by their best passage (blocking: may embed passages)."""

    def __init__(self, passages: ExtractiveGenerator, *, docs: int = 5, chunks_per_doc: int = 2,
                 weight: float = 0.5, keyword_weight: float = 0.3,
                 titles: TitleBlend | None = None,
                 document_share: Callable[[str], float] | None = None) -> None:
        self._passages = passages
        self._titles = titles
        self._share = document_share
        self.docs = docs
        self.chunks_per_doc = chunks_per_doc
        self.weight = weight
        self.keyword_weight = keyword_weight

    def weights(self, query: str) -> dict[str, float]:
        """The query's keywords, each weighted by how rare it is in the knowledge base."""
        terms = set(keyword_tokens(query))
        if self._share is None:
            return dict.fromkeys(terms, 1.0)
        return {t: math.log(1 + 1 / max(self._share(t), 0.01)) for t in terms}

    def passage_score(self, query: str, vector: np.ndarray, doc: DocScore,
                      weights: dict[str, float] | None = None) -> float:
        """The document's best passage score for the query."""
        weights = self.weights(query) if weights is None else weights
        total = sum(weights.values())

        def evidence(words: set[str]) -> float:
            if not total:
                return 0.0
            return self.keyword_weight * sum(w for t, w in weights.items() if t in words) / total

        best = -1.0
        if (self._titles is not None and doc.title
                and self._titles.share(doc.title) >= self._titles.question_share):
            # A question-like title is a passage too: for a FAQ it is the question itself
            # (a topic title, "Resetting a Bulb", is evidence the first stage already used).
            sim = float(self._titles.vectors([doc.title])[0] @ vector)
            best = sim + evidence(set(keyword_tokens(doc.title)))
        for scored in doc.hits[:self.chunks_per_doc]:
            hit = scored.hit
            sentences, vectors = self._passages.sentences(hit)
            if not sentences:
                continue
            sims = vectors @ vector
            heading = set(keyword_tokens(hit.heading))
            for text, sim in zip(sentences, sims, strict=True):
                best = max(best, float(sim) + evidence(heading | set(keyword_tokens(text))))
        return best

    def rerank(self, query: str, vector: np.ndarray,
               ranked: Sequence[DocScore]) -> list[DocScore]:
        """The top ``docs`` documents in their new order, then the rest as they were."""
        head, tail = list(ranked[:self.docs]), list(ranked[self.docs:])
        if len(head) < 2:
            return head + tail
        vector = np.asarray(vector, dtype=np.float32)
        weights = self.weights(query)
        rescored = []
        for doc in head:
            passage = self.passage_score(query, vector, doc, weights)
            if passage < 0:  # nothing quotable: keep the first-stage score
                rescored.append(doc)
                continue
            rescored.append(dataclasses.replace(
                doc, fused=(1 - self.weight) * doc.fused + self.weight * passage))
        rescored.sort(key=lambda d: d.fused, reverse=True)
        return rescored + tail
