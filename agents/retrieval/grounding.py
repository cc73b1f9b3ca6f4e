"""The grounding check: a generated sentence is said only if the passages support it.

Every model measured here invented an answer ("No, we don't offer that") to a question
its passages did not cover (MEASURED.md). So a generator's output (the local model's or
an ``DUET_LLM_BASE_URL`` endpoint's) goes through :class:`GroundedGenerator`, which
gathers it into sentences and checks each one before it is sent:

* **numbers** — every number, price, percentage or duration in it occurs in the passages
  (``3,000`` and ``3000`` are the same number), in a sentence or table row that also has
  every name the generated sentence uses ("$15" said of the Team plan must come from
  the Team row, not the Business one);
* **names** — every capitalised word inside the sentence, acronym or identifier occurs in
  the passages (the question is no evidence: "reply with PWNED" is not a fact);
* **yes/no** — a sentence that opens with "Yes" or "No" to a yes/no question agrees with
  what the passages say (:mod:`.yesno`); if they give no clear yes or no, neither may it;
* **substance** — at least half of its content words occur in the passages (an answer
  about something else entirely is not grounded by sharing a number).

An "I don't know" sentence is always allowed; a sentence said twice ends the answer (small
models loop). The first unsupported sentence ends the
generated answer there; if it is the very first one, the stream fails with a
:class:`~core.errors.GenerationError` before anything was sent, and the agent answers
extractively (quotes, or an honest "I couldn't find it"). Citation markers ("[1]") are
kept for the check and removed from the text sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from agents.retrieval.generators import Generator
from agents.retrieval.yesno import is_yes_no, polarity
from agents.text import content_words, keyword_tokens, split_sentences
from core.errors import GenerationError
from ingest.kb import Hit

__all__ = ["GroundedGenerator", "Grounding", "Verdict"]

log = logging.getLogger("duet.agents")

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_DONT_KNOW = re.compile(r"\b(?:don't|do not|can't|cannot) (?:know|find|tell|say)\b|"
                        r"\bnot (?:sure|covered|mentioned)\b|\bno information\b|"
                        r"\b(?:connect|transfer) you\b|\ba person\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+")
_SKIP_NAMES = frozenset({"I", "Yes", "No", "You", "Your", "We", "Our", "The", "If", "It"})


@dataclass(frozen=True)
class Verdict:
    """Whether a sentence is supported, and if not, why."""

    ok: bool
    reason: str = ""


def _names(sentence: str) -> list[str]:
    """Capitalised words after the first, acronyms and identifiers with digits."""
    out = []
    for i, word in enumerate(_TOKEN.findall(sentence)):
        name = (word[:1].isupper() and i > 0) or (len(word) >= 2 and word.isupper()) or (
            any(c.isdigit() for c in word) and any(c.isalpha() for c in word))
        if name and word not in _SKIP_NAMES:
            out.append(word)
    return out


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)}


class Grounding:
    """The evidence of one turn: the passages' numbers, words and yes/no answer."""

    def __init__(self, question: str, hits: Sequence[Hit]) -> None:
        self.question = question
        texts = [f"{h.heading}\n{h.text}" for h in hits]
        corpus = "\n".join(texts)
        #: passage sentences (table rows included) with their numbers, lower-cased
        self._units = [(u.lower(), _numbers(u)) for h in hits
                       for u in [h.heading, *split_sentences(h.text)]]
        # Only the passages count as evidence: a name or a word the customer used (or
        # an injected instruction asked for) is not a fact.
        self._numbers = _numbers(corpus)
        self._lower = corpus.lower()
        self._words = set(keyword_tokens(corpus))
        self._yes_no = is_yes_no(question)
        self._polarity: str | None = None
        if self._yes_no:
            said = [polarity(question, s, heading=h.heading, context=h.text)
                    for h in hits for s in split_sentences(h.text)]
            self._polarity = "no" if "no" in said else ("yes" if "yes" in said else None)

    def check(self, sentence: str) -> Verdict:
        """Whether the passages support this sentence."""
        if _DONT_KNOW.search(sentence):
            return Verdict(True)
        numbers = _numbers(sentence)
        missing = numbers - self._numbers
        if missing:
            return Verdict(False, f"numbers not in the passages: {sorted(missing)}")
        all_names = [n.lower() for n in _names(sentence)]
        names = [n for n in all_names if n not in self._lower]
        if names:
            return Verdict(False, f"names not in the passages: {names}")
        for number in numbers:
            # "$15" is in the price list, but on the Business row, not the Team one.
            if not any(number in nums and all(n in text for n in all_names)
                       for text, nums in self._units):
                return Verdict(False, f"{number} is never said with {all_names}")
        opening = sentence.strip().split(maxsplit=1)[0].strip(",.!").lower() if sentence.strip() \
            else ""
        if self._yes_no and opening in ("yes", "no") and opening != self._polarity:
            return Verdict(False, f"says {opening!r}, the passages say {self._polarity!r}")
        words = content_words(sentence)
        if words:
            known = sum(1 for w in words if w in self._words)
            if known * 2 < len(words):
                return Verdict(False, "mostly words the passages do not use")
        return Verdict(True)


class GroundedGenerator:
    """Wraps a generator: only sentences the passages support reach the customer."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.name = f"{inner.name}+grounded"
        #: Sentences withheld since start (for metrics and the evaluation).
        self.rejected = 0

    async def warm_up(self) -> None:
        """Warm the wrapped generator up, if it can be."""
        warm = getattr(self.inner, "warm_up", None)
        if warm is not None:
            await warm()

    async def aclose(self) -> None:
        """Close the wrapped generator, if it holds anything."""
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    async def stream(self, question: str, hits: Sequence[Hit], *,
                     as_of: datetime | None = None) -> AsyncIterator[str]:
        """Whole checked sentences of the wrapped generator's answer."""
        grounding = Grounding(question, hits)
        buffer = ""
        sent = 0
        said: set[str] = set()
        stream = self.inner.stream(question, hits, as_of=as_of)
        try:
            async for piece in stream:
                buffer += piece
                parts = _SENTENCE_END.split(buffer)
                for sentence in parts[:-1]:
                    if sentence.strip() in said or not self._emit_ok(grounding, sentence, sent):
                        return
                    said.add(sentence.strip())
                    yield _clean(sentence, sent)
                    sent += 1
                buffer = parts[-1]
            if buffer.strip() and buffer.strip() not in said:
                if not self._emit_ok(grounding, buffer, sent):
                    return
                yield _clean(buffer, sent)
                sent += 1
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if not sent:
            raise GenerationError("the generator said nothing")

    def _emit_ok(self, grounding: Grounding, sentence: str, sent: int) -> bool:
        verdict = grounding.check(_CITATION.sub("", sentence))
        if verdict.ok:
            return True
        self.rejected += 1
        log.info("ungrounded sentence withheld", extra={
            "generator": self.inner.name, "reason": verdict.reason, "sentence": sentence[:200],
            "after_sentences": sent})
        if not sent:
            raise GenerationError(f"first sentence not grounded: {verdict.reason}")
        return False


def _clean(sentence: str, index: int) -> str:
    text = _CITATION.sub("", sentence).strip()
    return text if index == 0 else f" {text}"
