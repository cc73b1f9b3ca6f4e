"""The quality gate: documents that would harm answers are quarantined, not indexed.

Besides short text, control characters and prompt-injection markers, the gate finds
*repetitive low-information text* (a few support words repeated for hundreds of kilobytes):
such a document costs the worker seconds per hundred chunks and, once indexed, its
near-duplicate chunks crowd real answers out of the nearest-neighbour search. Two measures,
per chunk and per document, both calibrated on the sample KB, ``bench/corpora`` (StackFAQ,
GitHub docs) and ``tests/fixtures/kb_vendor`` (zero false positives there):

* the distinct-word ratio of a chunk: real chunks of 60 words or more have at least 0.24
  (code listings are the lowest), a repeated-words chunk about 0.06;
* per document, distinct words over √words (Heaps' law keeps it above ~6 for real text of
  any length; a repeated-word document is under 0.1) and the zlib compression ratio (real
  documents at most 3.1×, repeated words 9× and more).

A document whose repetitive chunks are at least half its text, or which fails a document
measure, is quarantined; otherwise its repetitive chunks are dropped and the rest indexed.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Repetition", "is_repetitive", "quality_problem", "repetition_check"]

_INJECTION = [
    re.compile(p, re.IGNORECASE | re.MULTILINE)
    for p in (
        r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|any)\b"
        r".{0,40}\b(instructions?|prompts?|rules|directions)\b",
        r"\byou are now\b.{0,60}\b(assistant|ai|bot|model|dan|mode)\b",
        r"\b(reveal|print|show|repeat)\b.{0,30}\b(system|hidden|secret)\s+(prompt|instructions?)\b",
        r"<\|(im_start|im_end|system|endoftext)\|>",
        r"^\s*#{0,3}\s*(system|assistant)\s*(prompt)?\s*:",
        r"\bdo anything now\b|\bjailbreak\b",
        r"\[\s*(INST|SYS)\s*\]|<<\s*SYS\s*>>",
    )
]


def quality_problem(content: str, *, min_chars: int) -> str | None:
    """Why ``content`` must not be indexed, or None when it may be."""
    visible = content.strip()
    if len(visible) < min_chars:
        return f"too short: {len(visible)} characters, at least {min_chars} required"
    bad = [ch for ch in content if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t"]
    if bad:
        return f"control characters: {len(bad)} (first U+{ord(bad[0]):04X})"
    for pattern in _INJECTION:
        match = pattern.search(content)
        if match:
            return f"prompt-injection marker: {match.group(0)[:80]!r}"
    return None


_WORD = re.compile(r"\w+")
#: A chunk of at least this many words with fewer distinct ones than the ratio is repetitive.
_CHUNK_MIN_WORDS = 60
_CHUNK_MIN_DISTINCT_RATIO = 0.15
#: A document of at least this many words is repetitive under either measure.
_DOC_MIN_WORDS = 2000
_DOC_MIN_HEAPS = 2.0
_DOC_MAX_COMPRESSION = 6.0
#: Repetitive chunks holding this share of the text quarantine the whole document.
_QUARANTINE_SHARE = 0.5


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def is_repetitive(text: str) -> bool:
    """Whether one chunk is a few words repeated (long enough to tell, too few distinct)."""
    words = _words(text)
    return (len(words) >= _CHUNK_MIN_WORDS
            and len(set(words)) / len(words) < _CHUNK_MIN_DISTINCT_RATIO)


@dataclass(frozen=True, slots=True)
class Repetition:
    """What the repetition check found in one document."""

    #: Why the whole document must be quarantined, or None.
    problem: str | None
    #: Positions (in the chunk list) of repetitive chunks to drop when it is not quarantined.
    drop: frozenset[int]

    @property
    def note(self) -> str | None:
        """What was dropped, for the registry record and the event's outcome."""
        if self.problem is not None or not self.drop:
            return None
        return f"dropped {len(self.drop)} repetitive low-information chunk(s)"


def repetition_check(content: str, chunk_texts: Sequence[str]) -> Repetition:
    """Quarantine, drop some chunks, or keep all (see the module docstring)."""
    words = _words(content)
    distinct = len(set(words))
    if len(words) >= _DOC_MIN_WORDS:
        heaps = distinct / math.sqrt(len(words))
        raw = content.encode("utf-8", errors="replace")
        compression = len(raw) / max(len(zlib.compress(raw, 6)), 1)
        if heaps < _DOC_MIN_HEAPS or compression > _DOC_MAX_COMPRESSION:
            return Repetition(
                f"repetitive low-information text: {distinct} distinct words in {len(words)} "
                f"(compresses {compression:.1f}x)", frozenset())
    flagged = frozenset(i for i, text in enumerate(chunk_texts) if is_repetitive(text))
    if not flagged:
        return Repetition(None, frozenset())
    total = sum(len(t) for t in chunk_texts) or 1
    share = sum(len(chunk_texts[i]) for i in flagged) / total
    if share >= _QUARANTINE_SHARE:
        return Repetition(
            f"repetitive low-information text: {len(flagged)} of {len(chunk_texts)} chunks "
            f"({share:.0%} of the text) repeat a few words", frozenset())
    return Repetition(None, flagged)
