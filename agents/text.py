"""Small text helpers the agents share: keyword tokens, sentences and key noun phrases.

Nothing here loads a model: these are the cheap signals that run on every turn in
microseconds (keyword overlap, sentence boundaries, the noun phrase an acknowledgment
can name when no intent matches).
"""

from __future__ import annotations

import functools
import re

import snowballstemmer

__all__ = [
    "STOPWORDS",
    "content_words",
    "keyword_tokens",
    "noun_phrase",
    "split_sentences",
    "stem",
    "title_phrase",
]


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Function words: never keywords, never part of a key noun phrase.
STOPWORDS = _wordset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing done down during each either else
even ever every few for from further had has have having he her here hers him his how i if in
into is it its itself just let me might more most much must my myself neither no nor not now of
off on once one only or other ought our ours out over own please same shall she should so some
still such than that the their theirs them then there these they this those through to too
under until up upon us very via was we were what when where whether which while who whom whose
why will with within without would yet you your yours yourself hi hello hey thanks thank ok okay
yes yeah im ive id ill dont doesnt didnt cant cannot wont isnt arent wasnt s t ll ve re d m
""")

#: Verbs and fillers that carry no topic: skipped when looking for a noun phrase.
_NON_TOPIC = _wordset("""
get got gets getting want wants wanted need needs needed like know knows tell told help helps
sell sells sold buy buys bought make makes made use used uses work works working find found see
look looking go going come give take try trying ask asking say said think fix fixing put keep
seem show pay send sent happen happened happens change check wonder wondering question questions
quick anyone someone something anything thing things stuff problem problems issue issues way
possible really actually maybe just sure also again still there able good great new old
long much many often soon far big small little fast quick slow late early right wrong best
better first last next kind sort type lot bit broken stuck dead working missing fine weird
strange different same
""")

#: Nouns too vague to name in an acknowledgment.
_VAGUE = frozenset({"help", "question", "thing", "something", "problem", "issue", "stuff", "info",
                    "information", "way", "time", "today", "day", "lot", "bit", "yesterday",
                    "tomorrow", "week", "weeks", "month", "months", "year", "years", "days",
                    "hour", "hours", "minute", "minutes", "due", "ago"})

_WORD = re.compile(r"[a-z0-9]+")
_STEMMER = snowballstemmer.stemmer("english")
_PHRASE_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*|\S+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z\"'(\[])")
_QUOTE = re.compile(r"^\s*>\s?")
_ADMONITION = re.compile(r"^\s*\[![A-Za-z]+\]\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")
_FLIP = {"my": "your", "mine": "yours", "our": "your", "ours": "yours", "i": "you",
         "me": "you", "myself": "yourself", "your": "our", "yours": "ours"}
_DETERMINERS = frozenset({"my", "your", "our", "the", "a", "an", "this", "that", "these", "those"})


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The Snowball (Porter 2) stem of a lower-case word: ``pairing`` → ``pair``."""
    return _STEMMER.stemWord(word)


def keyword_tokens(text: str, *, drop: frozenset[str] = frozenset()) -> list[str]:
    """Lower-case, stemmed tokens without stopwords (what BM25 and keyword overlap use)."""
    words = _WORD.findall(text.lower().replace("'", ""))
    return [stem(w) for w in words if w not in STOPWORDS and w not in drop]


def content_words(text: str) -> list[str]:
    """Keyword tokens that also carry a topic (no filler verbs such as *want* or *help*)."""
    return keyword_tokens(text, drop=_NON_TOPIC)


def split_sentences(text: str) -> list[str]:
    """Sentences of a section body, in order; list items and lines count as sentences."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        # Block quotes read as plain text; admonition markers ("> [!NOTE]") are dropped.
        lines = [_QUOTE.sub("", ln) for ln in block.splitlines()]
        lines = [ln for ln in lines if ln.strip() and not _ADMONITION.match(ln)]
        # A paragraph wrapped over several lines is one unit; list items stand alone.
        units: list[str] = []
        for line in lines:
            if _BULLET.match(line) or not units:
                units.append(_BULLET.sub("", line).strip())
            else:
                units[-1] = f"{units[-1]} {line.strip()}"
        for unit in units:
            out.extend(s.strip() for s in _SENTENCE_END.split(unit) if s.strip())
    return [s.strip("# ").strip() for s in out if len(s.strip("# ").strip()) > 1]


def noun_phrase(text: str, *, max_words: int = 4) -> str | None:
    """The key noun phrase of a message, as the agent says it (``my`` → ``your`` → ``our``).

    The longest run of topic words (no stopwords, filler verbs or digits), with the
    determiner in front of it; ``None`` when nothing specific is left.
    """
    words = [w.strip(".,;:!?\"()[]") for w in _PHRASE_WORD.findall(text)]
    runs: list[list[str]] = []
    current: list[str] = []
    determiner: str | None = None
    for word in words:
        low = word.lower().replace("'", "")
        is_topic = (bool(word) and word[0].isalpha() and not any(c.isdigit() for c in word)
                    and low not in STOPWORDS and low not in _NON_TOPIC and len(low) > 1)
        if is_topic:
            if not current and determiner:
                current.append(_FLIP.get(determiner, determiner))
            current.append(word if not word.isupper() or len(word) <= 4 else word.lower())
            determiner = None
            continue
        if current:
            runs.append(current)
            current = []
        determiner = low if low in _DETERMINERS else None
    if current:
        runs.append(current)

    def size(run: list[str]) -> int:
        return sum(1 for w in run if w.lower() not in _DETERMINERS)

    runs = [r for r in runs if size(r) and not all(w.lower() in _VAGUE | _DETERMINERS for w in r)]
    if not runs:
        return None
    best = max(reversed(runs), key=size)  # on a tie the later run: usually the object
    if size(best) > max_words:
        best = best[-max_words:]
    return " ".join(best)


def title_phrase(title: str) -> str | None:
    """A title as a phrase inside a sentence ("Pairing Devices" → "pairing Devices"); no digits.

    Only the first word is lowered, and only when it is not an acronym; the topic index
    (:mod:`ingest.topics`) says titles better, from how the articles write their words.
    """
    words = [w for w in title.split() if not any(c.isdigit() for c in w)]
    if not words:
        return None
    first = words[0]
    if not first.isupper():
        words[0] = first[0].lower() + first[1:]
    return " ".join(words).rstrip(":")
