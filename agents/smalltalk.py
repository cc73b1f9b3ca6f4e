"""Small talk: messages that are only a greeting, thanks, an "ok" or a goodbye.

Such a message is not a question for the knowledge base (nor a follow-up of the last
one): the retrieval agent answers it with one courteous line instead of searching.
"""

from __future__ import annotations

import re

__all__ = ["small_talk"]

_WORD = re.compile(r"[a-z]+")
_GREETING = {"hi", "hello", "hey", "hiya", "howdy", "morning", "evening", "afternoon"}
_THANKS = {"thanks", "thank", "thx", "ty", "cheers", "appreciate", "appreciated"}
_BYE = {"bye", "goodbye", "cya", "later"}
_OK = {"ok", "okay", "alright", "great", "perfect", "awesome", "cool", "nice", "super",
       "brilliant", "got", "understood", "helped", "helps", "helpful", "excellent"}
_FILLER = {"you", "so", "much", "a", "lot", "very", "good", "there", "it", "that", "this",
           "all", "for", "the", "help", "your", "oh", "and", "no", "then", "see", "again",
           "really", "many", "everyone", "team", "was", "is"}
_REPLIES = {
    "thanks": "You're welcome! Is there anything else I can help you with?",
    "bye": "Thanks for reaching out, and have a great day!",
    "greeting": "Hello! What can I help you with today?",
    "ok": "Is there anything else I can help you with?",
    "decline": "All right! I'm here if you need anything else.",
}


def small_talk(text: str) -> str | None:
    """The courteous reply if ``text`` is only small talk, else ``None``."""
    words = _WORD.findall(text.lower().replace("'", ""))
    if not words or len(words) > 8:
        return None
    markers = _GREETING | _THANKS | _BYE | _OK
    if not all(w in markers or w in _FILLER for w in words):
        return None
    kinds = [k for k, vocab in (("bye", _BYE), ("decline", {"no"}), ("thanks", _THANKS),
                                ("greeting", _GREETING), ("ok", _OK))
             if any(w in vocab for w in words)]
    return _REPLIES[kinds[0]] if kinds else None
