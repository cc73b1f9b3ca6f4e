"""Yes/no questions: recognise them and read the answer's polarity off a passage.

A person answers "Is there a free trial?" with "Yes, …" or "No, …". The polarity comes
from the passage the answer quotes, never from a guess:

* **no** when a negation ("not", "no", "never", "cannot", "won't", …) governs one of the
  question's own words — it comes at most four words before one ("do *not* count"), or
  right after one in a verb phrase ("minutes *cannot* be used");
* **yes** when the passage (with its section heading) contains two thirds of the
  question's keywords (a keyword may be the prefix of a passage word: "pay" →
  "payments"), every name the question uses ("Slack", "API"), and no such negation;
* otherwise **unknown**: the reply says the articles do not give a clear yes or no.

Word lists are English; every rule is cheap (microseconds, no model).
"""

from __future__ import annotations

import re
from typing import Literal

from agents.text import keyword_tokens

__all__ = ["Polarity", "is_yes_no", "polarity", "with_polarity"]

Polarity = Literal["yes", "no"]

_AUX = frozenset({
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would", "should",
    "has", "have", "had", "may", "might", "must", "am", "shall", "isnt", "arent", "dont",
    "doesnt", "cant", "wont", "didnt", "wasnt", "shouldnt", "wouldnt", "couldnt", "hasnt",
    "havent",
})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NEGATION = frozenset({
    "no", "not", "never", "cannot", "none", "nor", "neither", "without", "cant", "wont",
    "dont", "doesnt", "isnt", "arent", "wasnt", "werent", "didnt", "shouldnt", "couldnt",
    "wouldnt", "hasnt", "havent", "aint",
})
_AFTER_WINDOW = 4
_BEFORE_WINDOW = 3
_NAME = re.compile(r"\b[A-Z][A-Za-z0-9]*|\b\w*\d\w*")
_CLAUSE = re.compile(r"[,;:?!.]\s+|\s+(?:and|but|so)\s+(?=(?:is|are|do|does|can|will)\b)")


def _words(text: str) -> list[str]:
    return [w.replace("'", "") for w in _WORD.findall(text.lower().replace("\u2019", "'"))]


def _main_clause(question: str) -> str:
    """The clause that carries the question ("If I remove a user, will my bill drop?")."""
    parts = [p.strip() for p in _CLAUSE.split(question.strip()) if p.strip()]
    for part in reversed(parts):
        words = _words(part)
        if words and words[0] in _AUX:
            return part
    return parts[-1] if parts else question


def is_yes_no(question: str) -> bool:
    """Whether the (last) question asks for a yes or a no ("Do you …?", "Is there …?")."""
    sentences = [s for s in re.split(r"(?<=[?.!])\s+", question.strip()) if s.strip()]
    last = sentences[-1] if sentences else question
    words = _words(_main_clause(last))
    return bool(words) and words[0] in _AUX and "or" not in words[1:]


def polarity(question: str, passage: str, *, heading: str = "",
             context: str = "") -> Polarity | None:
    """What the passage says to the yes/no question: "yes", "no" or None (not clear).

    ``context``: the passage's whole section, where the names the question uses may be
    found ("LFS" spelt out in the sentence's neighbours).
    """
    clause = _main_clause(question)
    terms = set(keyword_tokens(clause))
    if not terms:
        return None
    words = _words(passage)
    stems = [(keyword_tokens(w) or [""])[0] for w in words]
    for i, word in enumerate(words):
        if word not in _NEGATION:
            continue
        after = stems[i + 1:i + 1 + _AFTER_WINDOW]
        before = stems[max(0, i - _BEFORE_WINDOW):i]
        verbal = word not in ("no", "none", "without")
        if any(s in terms for s in after) or (verbal and any(s in terms for s in before)):
            return "no"
    known = set(keyword_tokens(f"{heading} {passage}"))
    covered = {t for t in terms if t in known or (len(t) >= 3 and any(
        k.startswith(t) or (len(k) >= 3 and t.startswith(k)) for k in known))}
    names = set(keyword_tokens(" ".join(_NAME.findall(clause)[1:])))
    if names - covered - set(keyword_tokens(context)):
        return None  # "Do you integrate with Notion?" and the passage never names it
    if len(covered) * 3 >= len(terms) * 2:
        return "yes"
    return None


def with_polarity(answer: Polarity | None, sentence: str) -> str:
    """The sentence led by "Yes, " / "No, ", or by an honest "no clear answer" line."""
    if answer is None:
        return ("I couldn't find a clear yes or no on that in our help articles. "
                f"Here is what they say: {sentence}")
    first, _, rest = sentence.partition(" ")
    lower_first = first.lower() in _LOWERABLE
    body = (first.lower() + (" " + rest if rest else "")) if lower_first else sentence
    return f"{answer.capitalize()}{',' if lower_first else '.'} {body}"


#: Sentence openers that read naturally after "Yes, " in lower case.
_LOWERABLE = frozenset({
    "the", "a", "an", "you", "your", "we", "our", "every", "each", "all", "any", "there",
    "it", "this", "these", "those", "that", "if", "when", "anyone", "some", "most", "many",
    "only", "in", "on", "for", "with", "after", "before", "once", "both",
})
