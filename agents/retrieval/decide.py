"""The decide step: answer, ask back, or fall back honestly — with a calibrated confidence.

Confidence that the top document answers the query::

    confidence = sigmoid((s1 - 0.35) / 0.05) × (0.7 + 0.3 × min(1, margin / 0.10))

``s1`` is the top document's relevance (cosine similarity of its best chunk; freshness
orders documents but does not make the best one a worse answer) and ``margin`` how far
it is ahead of the best relevance among the other documents. Measured through the
whole agent on the bundled sample KB (218 in-domain questions from the intent examples,
18 out-of-domain ones): answers with confidence ≥ 0.8 had the right document first 92 %
of the time, 0.6–0.8: 65 %; falling back below 0.25 caught 16 of the 18 out-of-domain
questions and 6 of the 218 in-domain ones (3 of those had the right document first, and
a fallback quotes it as partial information when it is at all relevant).

A question that names something no document mentions ("Bitcoin"), or a rare name the
top document lacks when no close runner-up has it, falls back (:mod:`.names`).

Asking back ("clarify") needs three things at once: a vague query (at most six words, no
product noun of its own, and either at most three words or leaning on "it", "that",
"something"), two documents whose relevances are close, and documents about different
things (their titles' embeddings differ).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from langgraph.runtime import Runtime

from agents.escalation import EscalationFlag, EscalationPolicy, detect_flags
from agents.retrieval.hybrid import DocScore
from agents.retrieval.names import NameCheck
from agents.text import stem
from ingest.embeddings import Embedder

if TYPE_CHECKING:
    from agents.retrieval.turn import TurnContext

__all__ = ["DecideNode", "DecisionPolicy", "Verdict", "decide"]

_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")


@dataclass(frozen=True)
class DecisionPolicy:
    """The confidence curve and the thresholds of each decision."""

    #: Top score at which confidence is one half (before the margin factor).
    center: float = 0.35
    #: Width of the sigmoid: a score ``scale`` higher multiplies the odds by e.
    scale: float = 0.05
    #: Margin from which the margin factor is 1.
    margin_full: float = 0.10
    #: The margin factor with no margin at all.
    margin_floor: float = 0.7
    #: Below this confidence the agent falls back.
    fallback_below: float = 0.25
    #: A fallback quotes the best document when its score reaches this.
    partial_min_score: float = 0.3
    #: Clarify only when the two top documents are closer than this...
    clarify_margin: float = 0.05
    #: ...the second one scores at least this...
    clarify_min_score: float = 0.25
    #: ...the query has at most this many words...
    clarify_max_words: int = 6
    #: ...and the two titles are less similar than this.
    clarify_title_similarity: float = 0.75
    #: A second document joins the answer when its fused score is within this of the first.
    near_tie: float = 0.03

    def confidence(self, top: float, margin: float) -> float:
        """Confidence in [0, 1] from the top document's score and its lead."""
        relevance = 1.0 / (1.0 + math.exp(-(top - self.center) / self.scale))
        lead = self.margin_floor + (1 - self.margin_floor) * min(1.0, max(margin, 0.0)
                                                               / self.margin_full)
        return max(0.0, min(1.0, relevance * lead))


@dataclass(frozen=True)
class Verdict:
    """What the decide step concluded."""

    decision: str
    confidence: float
    #: Documents the answer (or the clarifying question) is about, best first.
    docs: tuple[DocScore, ...]
    #: Flags the decision adds (low_confidence, not_found).
    flags: tuple[EscalationFlag, ...]


_UNSPECIFIC = frozenset({"it", "this", "that", "these", "those", "they", "them", "one",
                         "something", "anything", "thing", "things", "stuff"})


def _vague(query: str, terms: frozenset[str], max_words: int) -> bool:
    """Short, naming no product, and either tiny or leaning on "it"/"something"."""
    words = [w.lower() for w in _WORDS.findall(query)]
    if len(words) > max_words or any(stem(w) in terms and not w.endswith("ing") for w in words):
        return False
    return len(words) <= 3 or any(w in _UNSPECIFIC for w in words)


def decide(ranked: Sequence[DocScore], query: str, *, policy: DecisionPolicy,
           terms: frozenset[str], embedder: Embedder, may_clarify: bool = True,
           names: NameCheck | None = None) -> Verdict:
    """Answer, clarify or fall back (blocking: may embed two titles, cached)."""
    if not ranked:
        return Verdict("fallback", 0.0, (), (EscalationFlag.not_found,))
    if names is not None and names.unknown(query):
        # The question names something no document mentions: the KB cannot answer it.
        return Verdict("fallback", 0.0, (), (EscalationFlag.not_found,))
    if names is not None and names.absent_from(query, ranked[0].doc_id):
        # A document that does mention it may sit right below the top one.
        having = [d for d in ranked[1:3] if not names.absent_from(query, d.doc_id)]
        if not having:
            return Verdict("fallback", 0.0, (ranked[0],), (EscalationFlag.low_confidence,))
        ranked = [having[0], *[d for d in ranked if d is not having[0]]]
    top = ranked[0]
    runner_up = max((d.relevance for d in ranked[1:]), default=0.0)
    raw = policy.confidence(top.relevance, top.relevance - runner_up)
    confidence = round(raw, 3)
    if raw < policy.fallback_below:
        relevant = top.relevance >= policy.partial_min_score
        flag = EscalationFlag.low_confidence if relevant else EscalationFlag.not_found
        return Verdict("fallback", confidence, (top,) if relevant else (), (flag,))
    if may_clarify and len(ranked) > 1:
        second = ranked[1]
        if (second.relevance >= policy.clarify_min_score
                and top.relevance - second.relevance < policy.clarify_margin
                and _vague(query, terms, policy.clarify_max_words)
                and _differ(top.title, second.title, embedder, policy.clarify_title_similarity)):
            return Verdict("clarify", confidence, (top, second), ())
    docs = [top]
    if len(ranked) > 1 and top.fused - ranked[1].fused <= policy.near_tie:
        docs.append(ranked[1])
    return Verdict("answer", confidence, tuple(docs), ())


def _differ(a: str, b: str, embedder: Embedder, threshold: float) -> bool:
    return float(np.dot(embedder.embed_one(a), embedder.embed_one(b))) < threshold




class DecideNode:
    """Graph node: the verdict, and whether a person should take over."""

    def __init__(self, embedder: Embedder, terms: Callable[[], frozenset[str]], *,
                 policy: DecisionPolicy = DecisionPolicy(),
                 escalation: EscalationPolicy | None = None,
                 names: NameCheck | None = None) -> None:
        self._embedder = embedder
        self._terms = terms
        self._names = names
        self.policy = policy
        self.escalation = escalation or EscalationPolicy()

    async def __call__(self, state: dict, runtime: Runtime[TurnContext]) -> dict:
        turn = runtime.context
        rewrite = state["rewrite"]
        if rewrite.kind == "social":
            return {"verdict": Verdict("answer", 1.0, (), ()), "escalate_reason": None}
        verdict = await asyncio.to_thread(
            decide, state["ranked"], rewrite.query, policy=self.policy, terms=self._terms(),
            embedder=self._embedder, may_clarify=rewrite.kind != "clarify_reply",
            names=self._names)
        flags = tuple(dict.fromkeys((*(turn.flags or detect_flags(turn.text)), *verdict.flags)))
        reason = self.escalation.decide(flags, verdict.confidence, verdict.decision)
        return {"verdict": verdict, "escalate_reason": reason}
