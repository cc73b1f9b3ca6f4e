"""The contextualize step: is this turn a follow-up, and what is it really asking?

A follow-up ("how do I reset it?", "how long does that take?", "and for opened ones?")
is rewritten into a self-contained query with the topic it refers to; a new topic
("also, my bulbs won't pair") starts fresh. The rule, cheapest signal first:

0. Small talk ("thanks!", "ok bye"): neither; the agent answers it without searching.
1. No earlier topic (session memory, else the last user turns of the history): fresh.
2. The last turn asked the customer to choose, and this one is short: a reply to it.
3. A pivot marker ("also", "by the way", "another question") with its own product noun, or
   a whole question with its own product noun and no pronoun, however it starts
   ("And how do I turn on two-factor?"): fresh.
4. An elliptical start ("and …", "what about …", "for opened ones?"): follow-up.
5. Anaphora ("it", "that", "those", "this one") and no product noun of its own, or a bare
   product noun phrase ("the hub"): follow-up.
6. Anaphora *and* a product noun: follow-up if the pronoun must refer back ("does it …",
   "reset it") or the message is close to the topic (cosine ≥ 0.5).
7. Short (≤ 6 words) with no product noun: a follow-up if it has no topic words at all
   ("how much?"), else if it is closer to the previous topic than to the best chunk the
   knowledge base finds for it alone (one embedding and one search, reused if fresh).
8. Otherwise fresh.

"Product nouns" are the words of the knowledge base's document titles that name things
(from the keyword index). A follow-up whose pronoun is the object of a verb ("reset
it") gets the topic's entity substituted ("reset the hub"); any other follow-up is
prefixed with the topic's anchor query ("How do I reset the hub? how long does that take?");
a bare noun phrase answering a question with a pronoun fills it in ("How do I set it up?"
+ "the hub" → "How do I set the hub up?").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from langgraph.runtime import Runtime

from agents.retrieval.cache import SessionTopic
from agents.smalltalk import small_talk
from agents.text import content_words, stem
from ingest.kb import KnowledgeBase, SearchResult

if TYPE_CHECKING:
    from agents.retrieval.turn import TurnContext

__all__ = ["ContextPolicy", "ContextualizeNode", "Contextualizer", "Rewrite", "entity_phrase"]

RewriteKind = Literal["fresh", "pivot", "substitute", "context", "clarify_reply", "social"]

_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_DEMONSTRATIVES = {"that", "this", "these", "those"}
_AUXILIARIES = frozenset({
    "is", "are", "was", "were", "be", "been", "being", "do", "does", "did", "can", "could",
    "will", "would", "should", "shall", "may", "might", "must", "has", "have", "had", "isn't",
    "aren't", "doesn't", "don't", "didn't", "won't", "can't", "wasn't",
})
_ELLIPTICAL = re.compile(
    r"^\s*(?:and|or|but|so|what about|how about|same (?:for|with)|what if|even|only|"
    r"for|in|on|with|without|from|at|by|after|before|during|instead)\b", re.I)
_PIVOT = re.compile(
    r"^\s*(?:also|btw|by the way|another (?:question|thing)|one more (?:question|thing)|"
    r"unrelated|(?:a )?different (?:question|topic)|new (?:question|topic)|separately|"
    r"on another note|oh and|ps|now)\b", re.I)
_DETERMINER = {"the", "my", "your", "our", "a", "an", "this", "that", "these", "those"}
_AUX_PRONOUN = re.compile(
    r"\b(?:is|are|was|were|do|does|did|can|could|will|would|should|has|have|won't|doesn't|"
    r"isn't|can't)\s+(?:it|they|that|this|those|these)\b(?!\s+(?:possible|ok|okay|true|normal|"
    r"necessary|safe|worth|a good idea|better|easier|allowed|too|free|required|mandatory|"
    r"common|late|early|hard|easy|expensive|cheaper)\b)", re.I)


@dataclass(frozen=True)
class ContextPolicy:
    """Thresholds of the follow-up rule (cosine similarities of unit embeddings)."""

    #: At most this many words for a message to count as short.
    short_words: int = 6
    #: Anaphora with its own product noun: a follow-up if this close to the topic.
    related_min: float = 0.5
    #: How many earlier user turns the history fallback looks at.
    window_turns: int = 3


@dataclass(frozen=True)
class Rewrite:
    """The query to search for, and how it was obtained."""

    query: str
    kind: RewriteKind
    #: The topic anchor the follow-up refers to (None for a fresh query).
    anchor: str | None = None
    #: A search of the message alone, when the rule needed one (reusable if fresh).
    probe: SearchResult | None = None

    @property
    def follow_up(self) -> bool:
        """Whether the query was completed from an earlier turn."""
        return self.kind in ("substitute", "context", "clarify_reply")


def _tokens(text: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(text)]


def entity_phrase(text: str, terms: frozenset[str]) -> str | None:
    """The main product-noun phrase of ``text`` with a determiner ("the Acme Hub").

    Runs of title words (gerunds such as "Resetting" excluded); the first run the text
    introduces with a determiner wins, else the longest.
    """
    words = _WORDS.findall(text)

    def noun(word: str) -> bool:
        low = word.lower()
        return stem(low) in terms and not low.endswith("ing")

    runs: list[tuple[bool, list[str]]] = []
    i = 0
    while i < len(words):
        if not noun(words[i]):
            i += 1
            continue
        j = i
        while j < len(words) and noun(words[j]):
            j += 1
        det = words[i - 1].lower() if i > 0 and words[i - 1].lower() in _DETERMINER else None
        lead = det if det in ("my", "your", "our", "the", "these", "those") else "the"
        runs.append((det is not None, [lead, *words[i:j]]))
        i = j
    if not runs:
        return None
    with_det = [run for has_det, run in runs if has_det]
    return " ".join(with_det[0] if with_det else max((r for _, r in runs), key=len))


class Contextualizer:
    """Follow-up detection and rewriting (blocking: may embed and search once)."""

    def __init__(self, kb: KnowledgeBase, terms: Callable[[], frozenset[str]],
                 policy: ContextPolicy = ContextPolicy(), *, search_k: int = 16) -> None:
        self._kb = kb
        self._terms = terms
        self.policy = policy
        self._search_k = search_k

    def rewrite(self, text: str, history: Sequence[tuple[str, str]], topic: SessionTopic | None,
                groups: Sequence[str]) -> Rewrite:
        """The self-contained query of this turn."""
        text = text.strip()
        if small_talk(text) is not None:
            return Rewrite(text, "social")
        terms = self._terms()
        topic = topic or self._topic_from_history(text, history, terms)
        if topic is None:
            return Rewrite(text, "fresh")
        words = _tokens(text)
        own_entity = any(stem(w) in terms and not w.endswith("ing") for w in words)
        short = len(words) <= self.policy.short_words
        if topic.decision == "clarify" and short and not _PIVOT.match(text):
            filled = _fill(topic.anchor, text, words, terms)
            return Rewrite(filled or f"{topic.anchor} {text}", "clarify_reply", topic.anchor)
        if _PIVOT.match(text) and own_entity:
            return Rewrite(text, "pivot")
        anaphora = self._anaphora(words, terms)
        if own_entity and not anaphora and _names_own_topic(text, terms):
            # "And how do I turn on two-factor?": a whole question about a thing of its
            # own is a new topic, whatever conjunction it starts with.
            return Rewrite(text, "pivot")
        if (_ELLIPTICAL.match(text) or (anaphora and not own_entity)
                or _bare_phrase(words, terms)):
            return self._complete(text, topic, terms)
        if anaphora:
            if _strong_anaphora(text) or self._similarity(text, topic) >= self.policy.related_min:
                return self._complete(text, topic, terms)
            return Rewrite(text, "fresh")
        if not own_entity and not _PIVOT.match(text) and _shares_topic_word(text, topic):
            # "What do I do after the reset?" right after resetting a bulb: the definite
            # noun points back at the topic even without a pronoun or a product name.
            return self._complete(text, topic, terms)
        if not own_entity and short:
            if not content_words(text):  # "how much?", "why?": nothing but the topic to go on
                return self._complete(text, topic, terms)
            vector = self._kb.embedder.embed_one(text)
            probe = self._kb.search_vector(vector, k=self._search_k, groups=groups)
            standalone = probe.hits[0].relevance if probe.hits else 0.0
            if self._similarity(text, topic, vector) >= standalone:
                return self._complete(text, topic, terms)
            return Rewrite(text, "fresh", probe=probe)
        return Rewrite(text, "fresh")

    def _complete(self, text: str, topic: SessionTopic, terms: frozenset[str]) -> Rewrite:
        """Substitute an object pronoun with the topic's entity, else prefix the anchor."""
        filled = _fill(topic.anchor, text, _tokens(text), terms)
        if filled is not None:
            return Rewrite(filled, "substitute", topic.anchor)
        entity = entity_phrase(topic.anchor, terms) or (
            entity_phrase(topic.title, terms) if topic.title else None)
        if entity:
            substituted = _substitute_object(text, entity)
            if substituted is not None:
                return Rewrite(substituted, "substitute", topic.anchor)
        return Rewrite(f"{topic.anchor} {text}", "context", topic.anchor)

    def _anaphora(self, words: list[str], terms: frozenset[str]) -> bool:
        for i, w in enumerate(words):
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if w in ("it", "it's") and _pleonastic(words, i):
                continue
            if w in ("it", "them", "they", "its", "their") or (w == "one" and i > 0
                                                               and words[i - 1] in _DEMONSTRATIVES):
                return True
            if w == "ones":
                return True
            # "that"/"this" refer back unless they introduce a product noun ("this bulb").
            if w in _DEMONSTRATIVES and not (nxt and stem(nxt) in terms):
                return True
        return False

    def _similarity(self, text: str, topic: SessionTopic,
                    vector: np.ndarray | None = None) -> float:
        embedder = self._kb.embedder
        vector = embedder.embed_one(text) if vector is None else vector
        anchor = topic.vector if topic.vector is not None else embedder.embed_one(topic.anchor)
        return float(np.dot(vector, anchor))

    def _topic_from_history(self, text: str, history: Sequence[tuple[str, str]],
                            terms: frozenset[str]) -> SessionTopic | None:
        """The most recent self-contained user turn of the last few (no session memory)."""
        users = [t for role, t in history if role == "user" and t.strip()]
        if users and users[-1].strip() == text:
            users = users[:-1]
        window = users[-self.policy.window_turns:]
        for candidate in reversed(window):
            words = _tokens(candidate)
            own = any(stem(w) in terms for w in words)
            if own or not (self._anaphora(words, terms) or _ELLIPTICAL.match(candidate)):
                return SessionTopic(anchor=candidate.strip())
        return SessionTopic(anchor=" ".join(window)) if window else None


_IMPERSONAL = frozenset({"too", "possible", "ok", "okay", "safe", "normal", "true", "necessary",
                         "worth", "better", "easier", "allowed", "free", "required", "mandatory",
                         "common", "late", "early", "hard", "easy", "expensive", "cheaper"})


_CONNECTIVE = re.compile(
    r"^\s*(?:(?:oh|ok(?:ay)?|and|also|plus|so|but|or|then|now|btw|by the way|one more thing)"
    r"\b[\s,:;-]*)+", re.I)
_QUESTION_START = frozenset({
    "how", "what", "why", "when", "where", "which", "who", "whom", "is", "are", "do", "does",
    "did", "can", "could", "will", "would", "should", "may", "i", "my", "we", "our", "please",
})


def _names_own_topic(text: str, terms: frozenset[str]) -> bool:
    """A whole question (after any leading "and"/"also") that names a product noun itself.

    Not a bare phrase ("and the hub?") and not an elliptical fragment ("and for opened
    ones?"): at least four words, opening like a question or a statement of one's own.
    """
    rest = _tokens(_CONNECTIVE.sub("", text, count=1))
    if len(rest) < 4 or rest[0] not in _QUESTION_START:
        return False
    return any(stem(w) in terms and not w.endswith("ing") for w in rest)


def _shares_topic_word(text: str, topic: SessionTopic) -> bool:
    """Whether the message repeats a content word (stemmed) of the last topic."""
    own = {stem(w) for w in content_words(text)}
    theirs = {stem(w) for w in content_words(f"{topic.anchor} {topic.title or ''}")}
    return bool(own & theirs)


def _pleonastic(words: list[str], i: int) -> bool:
    """An "it" that refers to nothing: "is it too late", "it's possible to …"."""
    after = words[i + 1:i + 3]
    if words[i] == "it's":
        return bool(after) and after[0] in _IMPERSONAL
    if after and after[0] == "is":
        after = after[1:]
    elif not (i > 0 and words[i - 1] in ("is", "isn't", "was")):
        return False
    return bool(after) and after[0] in _IMPERSONAL


def _fill(anchor: str, text: str, words: list[str], terms: frozenset[str]) -> str | None:
    """A bare noun phrase answering an anchor with a pronoun: "set it up?" + "the hub"."""
    if not _bare_phrase(words, terms):
        return None
    return _substitute_object(anchor, text.strip().rstrip(".!?").strip())


def _bare_phrase(words: list[str], terms: frozenset[str]) -> bool:
    """A reply that is only a product noun phrase ("the hub", "my light strip")."""
    return 0 < len(words) <= 3 and any(w not in _DETERMINER for w in words) and all(
        w in _DETERMINER or (stem(w) in terms and not w.endswith("ing")) for w in words)


def _strong_anaphora(text: str) -> bool:
    """A pronoun that must refer back: "does it …", "is that …", "reset it" (not "is it possible")."""
    return bool(_AUX_PRONOUN.search(text)) or _substitute_object(text, "_") is not None


def _substitute_object(text: str, entity: str) -> str | None:
    """Replace the first object pronoun after a verb ("reset it" → "reset the hub")."""
    pattern = re.compile(r"\b(\w+)(\s+)(it|them|this one|that one|these ones|those ones|"
                         r"these|those)\b(?!\s+(?:is|are|was|were|do|does)\b)", re.I)
    for match in pattern.finditer(text):
        before = match.group(1).lower()
        if before in _AUXILIARIES or before in ("of", "about", "if", "that", "what"):
            continue
        start, end = match.span(3)
        return f"{text[:start]}{entity}{text[end:]}"
    return None


class ContextualizeNode:
    """Graph node: the turn's self-contained query."""

    def __init__(self, contextualizer: Contextualizer) -> None:
        self._contextualizer = contextualizer

    async def __call__(self, state: dict, runtime: Runtime[TurnContext]) -> dict:
        turn = runtime.context
        rewrite = await asyncio.to_thread(self._contextualizer.rewrite, turn.text, turn.history,
                                          turn.cache.topic, turn.groups)
        return {"rewrite": rewrite}
