"""Names in a question that the knowledge base (or the chosen article) never mentions.

"Can I pay with Bitcoin?" on a knowledge base that never says "Bitcoin" must not be
answered from the nearest article about payments: a name the customer uses — a
capitalised word inside a sentence, an acronym, an identifier with digits — that no
document contains means the knowledge base cannot answer, whatever the similarity says.
A name that only a few documents contain ("Copilot" in one of eight) must be in the
document the answer comes from; a name most documents contain (the company's own) is
no evidence either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agents.text import STOPWORDS, keyword_tokens

__all__ = ["NameCheck", "query_names"]

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")


def query_names(text: str) -> list[str]:
    """The names a question uses, as keyword stems (no stopwords, no sentence-initial word)."""
    out: list[str] = []
    for sentence in _SENTENCE.split(text):
        words = _TOKEN.findall(sentence)
        for i, word in enumerate(words):
            acronym = len(word) >= 2 and word.isupper()
            digits = any(c.isdigit() for c in word) and any(c.isalpha() for c in word)
            capital = word[:1].isupper() and i > 0
            if not (acronym or digits or capital) or word.lower() in STOPWORDS:
                continue
            out.extend(t for t in keyword_tokens(word) if t not in out and not t.isdigit())
    return out


@dataclass(frozen=True)
class NameCheck:
    """What the knowledge base's keyword snapshot knows about words and documents."""

    #: Whether any document has the stem.
    knows: Callable[[str], bool]
    #: The share of documents that have the stem.
    share: Callable[[str], float]
    #: Whether a document has the stem.
    has: Callable[[str, str], bool]
    #: A name in fewer than this share of documents must be in the answer's document.
    rare_share: float = 0.3

    def unknown(self, query: str) -> list[str]:
        """Names no document contains."""
        return [n for n in query_names(query) if not self.knows(n)]

    def absent_from(self, query: str, doc_id: str) -> list[str]:
        """Rare names the document does not contain."""
        return [n for n in query_names(query)
                if self.share(n) < self.rare_share and not self.has(doc_id, n)]
