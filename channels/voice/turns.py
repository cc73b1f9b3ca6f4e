"""Does a transcript read as a whole turn? The judgement behind an early end of turn.

At the caller's first short pause the utterance is decoded; if its transcript reads as
complete, the call submits it at once and lets the turn end after a shorter silence
(``voice_quick_end_silence_ms``) instead of the full ``voice_end_silence_ms``. Callers
who pause mid-sentence usually stop on a word that cannot end one ("and", "the", "to",
"um"), and Whisper writes their words without sentence-final punctuation or with a
trailing ellipsis: such a transcript keeps the longer wait.
"""

from __future__ import annotations

import re

__all__ = ["CONTINUATION_WORDS", "reads_complete"]

#: Words no sentence ends on: conjunctions, articles, possessives and fillers.
CONTINUATION_WORDS = frozenset((
    "and", "or", "but", "nor", "because", "if", "than", "whether", "although", "though",
    "unless", "while", "whereas",
    "a", "an", "the", "my", "your", "our", "their",
    "i", "we", "i'm", "we're", "you're", "they're",
    "um", "uh", "erm", "er", "hmm", "mm",
))
#: Prepositions a statement rarely ends on; a question often does ("Who do I talk
#: to?", "How do I log in?"), so these only count before a full stop.
_STATEMENT_CONTINUATION = frozenset((
    "to", "of", "for", "with", "without", "from", "at", "into", "onto", "via", "per",
    "between", "during", "against", "toward", "towards", "like",
))

_WORD = re.compile(r"[a-z0-9']+")


def reads_complete(text: str) -> bool:
    """Whether ``text`` (a Whisper transcript) reads as a whole turn.

    It must end with sentence-final punctuation (``.``, ``?``, ``!``; not an ellipsis),
    and its last word must not be one that a sentence continues after (a conjunction,
    an article, a filler; before a full stop, a preposition too).
    """
    stripped = text.strip().rstrip("\"')]")
    if not stripped or not stripped.endswith((".", "?", "!")):
        return False
    if stripped.endswith(("...", "…", "-.", "—.")):
        return False
    words = _WORD.findall(stripped.lower())
    if not words or words[-1] in CONTINUATION_WORDS:
        return False
    return stripped.endswith(("?", "!")) or words[-1] not in _STATEMENT_CONTINUATION
