"""Answer generators: the extension point that turns retrieved sections into answer text.

A :class:`Generator` streams pieces of a grounded answer for a question and the chunks
the decide step chose; the retrieval agent cites those chunks' documents and falls back
to the :class:`ExtractiveGenerator` when another generator fails before its first piece.

The extractive generator invents nothing: it quotes the 2–4 sentences of the retrieved
sections that best match the question, in their original order. A sentence scores its
embedding similarity to the question (all candidate sentences embedded in one batch and
cached per chunk), plus keyword overlap, plus how well its whole section scored, a
bonus for the top document and, for a "how do I" question, a bonus for steps ("Press
and hold …") — such a question always gets the first step of the best section; a "how
long" question favours a sentence with a duration, a price question one with a price,
a "how many" question one with a number (a table row carries its header, so "Plan: Team; Price: $8." is quotable).
A yes/no question gets "Yes, …" or "No, …" from the passage (:mod:`.yesno`), or an honest
"no clear answer". It reads at most three sections (two per document) so the first piece
of an answer is not held up by embedding a whole article. An OpenAI-compatible model (:mod:`agents.retrieval.llm`) is used instead when
``DUET_LLM_BASE_URL`` is set.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from agents.retrieval.yesno import is_yes_no, polarity, with_polarity
from agents.text import content_words, keyword_tokens, split_sentences
from core.cache import SharedLRU
from ingest.embeddings import Embedder
from ingest.kb import Hit

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["ExtractiveGenerator", "Generator", "Sentence", "build_generator"]

_HOW = re.compile(r"\bhow (?:do|can|should|would|could) (?:i|we|you)\b|\bhow to\b|\bsteps?\b",
                  re.I)
_LEADING = re.compile(r"^(?:then|first|next|finally|now|also|afterwards|in the app|"
                      r"on the \w+|if \w+[^,]*),?\s+", re.I)
_INSTRUCTION_VERBS = frozenset({
    "press", "hold", "open", "tap", "select", "choose", "go", "unplug", "plug", "turn",
    "switch", "click", "remove", "add", "make", "check", "move", "restart", "reset", "update",
    "install", "connect", "enter", "sign", "log", "follow", "wait", "screw", "use", "set",
    "pair", "contact", "mention", "pack", "drop", "visit", "call", "email", "keep", "try",
    "place", "mount", "peel", "cut", "download", "enable", "disable", "flip", "insert",
    "attach", "clean", "replace", "scan", "type", "find", "send", "start", "stop",
})


_DURATION = re.compile(
    r"\b\d+(?:[.,]\d+)?(?:\s*(?:to|-|–|or)\s*\d+(?:[.,]\d+)?)?[\s-]*(?:business\s+)?"
    r"(?:seconds?|minutes?|hours?|days?|weeks?|months?|years?)\b|\b(?:a|one|two|three|few) "
    r"(?:seconds?|minutes?|hours?|days?|weeks?|months?|years?)\b|\bimmediately\b|"
    r"\binstantly\b", re.I)
_PRICE = re.compile(r"[$€£¥]\s?\d|\d\s?(?:usd|eur|gbp|dollars?|euros?)\b|\bfree\b", re.I)
_NUMBER = re.compile(r"\b\d[\d,.]*\b")
_ASKS_DURATION = re.compile(r"\bhow (?:long|soon|quickly|fast)\b|\bwhen will\b", re.I)
_ASKS_PRICE = re.compile(
    r"\bhow much (?:is|are|does|do|will|would)\b|\b(?:price|prices|pricing|cost|costs|fee|fees|"
    r"charge|charged)\b", re.I)
_ASKS_NUMBER = re.compile(r"\bhow (?:much|many)\b|\b(?:limit|quota|maximum|minimum)\b", re.I)


def _expected_answer(question: str) -> re.Pattern[str] | None:
    """What kind of sentence answers the question: a duration, a price, a number, or any."""
    if _ASKS_DURATION.search(question):
        return _DURATION
    if _ASKS_PRICE.search(question):
        return _PRICE
    if _ASKS_NUMBER.search(question):
        return _NUMBER
    return None


def _last_question(question: str) -> str:
    """A rewritten follow-up ends with the customer's own question: that one decides."""
    parts = [p for p in re.split(r"(?<=[?!.])\s+", question.strip()) if p.strip()]
    return parts[-1] if parts else question


def _instruction(sentence: str) -> bool:
    """Whether a sentence is a step ("Press and hold …", "Then open the app …")."""
    words = _LEADING.sub("", sentence, count=1).split()
    return bool(words) and words[0].lower().strip(",") in _INSTRUCTION_VERBS


@runtime_checkable
class Generator(Protocol):
    """Streams a grounded answer; raises :class:`core.errors.GenerationError` on failure."""

    name: str

    def stream(self, question: str, hits: Sequence[Hit], *,
               as_of: datetime | None) -> AsyncIterator[str]:
        """Pieces of the answer in order (their concatenation is the answer)."""
        ...


@dataclass(frozen=True)
class Sentence:
    """A sentence of a retrieved section and how well it answers the question."""

    text: str
    doc_id: str
    chunk_id: str
    #: (rank of its document, position of its chunk, index in the chunk): reading order.
    order: tuple[int, int, int]
    score: float
    #: The heading path of its section.
    heading: str = ""


class ExtractiveGenerator:
    """Quotes the best sentences of the retrieved sections, in document order."""

    name = "extractive"

    def __init__(self, embedder: Embedder | None = None, *, min_sentences: int = 2,
                 max_sentences: int = 4,
                 keyword_weight: float = 0.25, section_weight: float = 0.15,
                 top_doc_bonus: float = 0.05, instruction_bonus: float = 0.1,
                 answer_type_bonus: float = 0.1,
                 window: float = 0.15, max_chunks: int = 3,
                 max_chunks_per_doc: int = 2, cache_size: int = 4096) -> None:
        self._embedder = embedder
        self.min_sentences = min_sentences
        self.max_sentences = max_sentences
        self.keyword_weight = keyword_weight
        self.section_weight = section_weight
        self.top_doc_bonus = top_doc_bonus
        self.instruction_bonus = instruction_bonus
        self.answer_type_bonus = answer_type_bonus
        self.window = window
        self.max_chunks = max_chunks
        self.max_chunks_per_doc = max_chunks_per_doc
        self._sentences: SharedLRU[str, tuple[list[str], np.ndarray]] = SharedLRU(cache_size)

    async def stream(self, question: str, hits: Sequence[Hit], *,
                     as_of: datetime | None = None) -> AsyncIterator[str]:
        """One piece per sentence (all are chosen first: scoring needs every candidate).

        A yes/no question is answered "Yes, …" / "No, …" from the best sentence that says
        so (it goes first), or says honestly that the articles give no clear yes or no.
        """
        picked = await asyncio.to_thread(self.select, question, hits)
        texts = [s.text for s in picked]
        if picked and is_yes_no(_last_question(question)):
            sections = {h.chunk_id: h.text for h in hits}
            texts = self._yes_no(_last_question(question), picked, sections)
        for i, text in enumerate(texts):
            yield text if i == 0 else f" {text}"

    @staticmethod
    def _yes_no(question: str, picked: list[Sentence], sections: dict[str, str]) -> list[str]:
        """The sentences with the polarity-bearing one first, led by "Yes"/"No".

        A "no" among the three best sentences wins over a "yes": a negation that governs
        the question's own words is the stronger evidence.
        """
        ranked = sorted(picked, key=lambda s: s.score, reverse=True)[:3]
        said = [(s, polarity(question, s.text, heading=s.heading,
                             context=sections.get(s.chunk_id, ""))) for s in ranked]
        lead, answer = next(((s, a) for s, a in said if a == "no"),
                            next(((s, a) for s, a in said if a == "yes"), (ranked[0], None)))
        rest = [s.text for s in picked if s is not lead]
        return [with_polarity(answer, lead.text), *rest[:2]]

    def select(self, question: str, hits: Sequence[Hit], *,
               limit: int | None = None) -> list[Sentence]:
        """The sentences to quote, in reading order (blocking: embeds unseen chunks)."""
        limit = limit or self.max_sentences
        chosen_hits = self._chunks(hits)
        if not chosen_hits:
            return []
        query = self._model.embed_one(question)
        terms = set(content_words(question)) or set(keyword_tokens(question))
        # A rewritten follow-up ends with the customer's own question: that one decides.
        last = [part for part in re.split(r"[?!.]\s+", question.strip()) if part.strip()]
        procedural = bool(_HOW.search(last[-1] if last else question))
        expects = _expected_answer(last[-1] if last else question)
        top_score = max((h.score for h in chosen_hits), default=0.0) or 1.0
        doc_rank: dict[str, int] = {}
        candidates: list[Sentence] = []
        for hit in chosen_hits:
            rank = doc_rank.setdefault(hit.doc_id, len(doc_rank))
            # How well the whole section fits (its heading included) and the document's rank.
            prior = self.section_weight * max(hit.score, 0.0) / top_score + (
                self.top_doc_bonus if rank == 0 else 0.0)
            sentences, vectors = self.sentences(hit)
            sims = vectors @ query if len(sentences) else np.zeros(0)
            for i, text in enumerate(sentences):
                overlap = (len(terms & set(keyword_tokens(text))) / len(terms)) if terms else 0.0
                score = float(sims[i]) + self.keyword_weight * overlap + prior
                if procedural and _instruction(text):
                    score += self.instruction_bonus
                if expects is not None and expects.search(text):
                    score += self.answer_type_bonus
                candidates.append(Sentence(text, hit.doc_id, hit.chunk_id,
                                           (rank, hit.position, i), score, hit.heading))
        if not candidates:
            return []
        best = max(candidates, key=lambda s: s.score)
        picked = [best]
        for s in sorted(candidates, key=lambda s: s.score, reverse=True):
            if len(picked) >= limit:
                break
            if s is not best and s.score >= best.score - self.window:
                picked.append(s)
        if len(picked) < min(self.min_sentences, limit):
            picked.extend(self._neighbours(best, candidates, picked,
                                           min(self.min_sentences, limit) - len(picked)))
        steps = [s for s in candidates if s.chunk_id == best.chunk_id and _instruction(s.text)]
        if procedural and limit > 1 and steps and not any(s in picked for s in steps):
            # "How do I …?" is answered by the steps of the best section, if it has any.
            if len(picked) >= limit:
                picked.remove(min((s for s in picked if s is not best), key=lambda s: s.score))
            picked.append(min(steps, key=lambda s: s.order))
        return sorted(picked, key=lambda s: s.order)

    @property
    def bound(self) -> bool:
        """Whether it has an embedder (one built without adopts the knowledge base's)."""
        return self._embedder is not None

    def bind(self, embedder: Embedder) -> ExtractiveGenerator:
        """This generator if it has an embedder, else a copy of its settings using ``embedder``."""
        if self._embedder is not None:
            return self
        return ExtractiveGenerator(
            embedder, min_sentences=self.min_sentences, max_sentences=self.max_sentences,
            keyword_weight=self.keyword_weight, section_weight=self.section_weight,
            top_doc_bonus=self.top_doc_bonus, instruction_bonus=self.instruction_bonus,
            answer_type_bonus=self.answer_type_bonus,
            window=self.window, max_chunks=self.max_chunks,
            max_chunks_per_doc=self.max_chunks_per_doc, cache_size=self._sentences.size)

    @property
    def _model(self) -> Embedder:
        if self._embedder is None:
            raise RuntimeError("ExtractiveGenerator needs an embedder: pass one or bind() it")
        return self._embedder

    def warm(self, hits: Sequence[Hit]) -> None:
        """Embed the sentences of these chunks ahead of time (prefetch; blocking)."""
        for hit in hits:
            self.sentences(hit)

    def _chunks(self, hits: Sequence[Hit]) -> list[Hit]:
        per_doc: dict[str, int] = {}
        out: list[Hit] = []
        for hit in hits:
            if len(out) >= self.max_chunks:
                break
            if per_doc.get(hit.doc_id, 0) < self.max_chunks_per_doc:
                per_doc[hit.doc_id] = per_doc.get(hit.doc_id, 0) + 1
                out.append(hit)
        return out

    def sentences(self, hit: Hit) -> tuple[list[str], np.ndarray]:
        """A chunk's sentences and their vectors, cached by chunk id (ids hash the text).

        Blocking: embeds the chunk's sentences on a cache miss. The passage re-ranker
        reads the same cache, so what it embedded the answer does not embed again; turns
        that miss on one chunk at once (a busy gateway answering the same article) share
        one embedding: the others wait for it.
        """
        return self._sentences.get_or_make(hit.chunk_id, lambda: self._embed_sentences(hit))

    def _embed_sentences(self, hit: Hit) -> tuple[list[str], np.ndarray]:
        sentences = [s for s in split_sentences(hit.text) if len(s.split()) >= 3]
        vectors = self._model.embed(sentences) if sentences else np.zeros((0, 1), np.float32)
        return sentences, vectors

    @staticmethod
    def _neighbours(best: Sentence, candidates: list[Sentence], picked: list[Sentence],
                    n: int) -> list[Sentence]:
        """The sentences right after (else before) the best one in its chunk."""
        same = [s for s in candidates if s.chunk_id == best.chunk_id and s not in picked]
        after = sorted((s for s in same if s.order > best.order), key=lambda s: s.order)
        before = sorted((s for s in same if s.order < best.order), key=lambda s: s.order,
                        reverse=True)
        return (after + before)[:n]


def build_generator(settings: Settings, embedder: Embedder | None = None) -> Generator:
    """The answer generator the settings ask for.

    ``DUET_LLM_BASE_URL`` set: that OpenAI-compatible endpoint; else ``DUET_GENERATOR=local``:
    the local model (:mod:`.local_llm`); else extractive. A model's answer goes through
    the grounding check (:mod:`.grounding`) unless ``DUET_GROUNDING_CHECK=false``.

    Without ``embedder`` the extractive generator adopts the knowledge base's when it is
    given to a :class:`~agents.retrieval.agent.RetrievalAgent`. The agent always keeps an
    extractive generator of its own as the fallback of a model that is slow, busy,
    ungrounded or failing. A local model loads in ``RetrievalAgent.warm_up``.
    """
    generator: Generator
    if settings.llm_base_url:
        from agents.retrieval.llm import OpenAIChatGenerator

        generator = OpenAIChatGenerator.from_settings(settings)
    elif settings.generator == "local":
        from agents.retrieval.local_llm import LocalLLMGenerator

        generator = LocalLLMGenerator.from_settings(settings)
    else:
        return ExtractiveGenerator(embedder)
    if settings.grounding_check:
        from agents.retrieval.grounding import GroundedGenerator

        generator = GroundedGenerator(generator)
    return generator
