"""The acknowledgment agent: a short, specific first reply within milliseconds.

It names what the customer asked about ("Let me check the returns policy for you.") and
never states a fact: the grounded answer follows in the same reply. What it may name
comes from two places only, so it never names a product, plan or topic that is in
neither the message nor the knowledge base:

1. the knowledge base as indexed now (:class:`ingest.topics.TopicIndex`: titles and
   section headings, rebuilt in the background as the ingest worker reports changes —
   never on an acknowledgment's path), when the message is close to
   one (cosine ≥ ``min_similarity`` with a content word in common, or ≥ ``sure_similarity``);
2. the customer's own words (the message's key noun phrase, "your free plan");

else a neutral line. What is not knowledge — greetings, thanks, asking for a person,
complaints — comes from ``configs/intents.yaml``. Templates rotate per session and the
same text is never used twice in a row. One call embeds one short text (~3 ms): call it
off the event loop like any other model call.
"""

from __future__ import annotations

import random
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.escalation import EscalationFlag, detect_flags
from agents.intents import Intent, IntentCatalog
from agents.text import content_words, noun_phrase, stem, title_phrase
from ingest.embeddings import Embedder
from ingest.topics import Topic, TopicIndex

__all__ = ["AckAgent", "Acknowledgment"]

_KB_TOPIC = (
    "Let me look up {topic} for you.",
    "One moment while I check {topic}.",
    "I'm pulling up {topic} now.",
    "Let me check {topic} for you.",
)
_NEUTRAL_TOPIC = (
    "Let me look into {topic} for you.",
    "One moment while I check on {topic}.",
    "I'm looking into {topic} now.",
)
_NEUTRAL = (
    "Let me look into that for you.",
    "One moment while I look into that.",
    "I'm checking on that for you now.",
)
_GREETING = re.compile(
    r"^\s*(?:hi|hello|hey|hiya|howdy|greetings|good (?:morning|afternoon|evening|day))\b"
    r"(?:\s+(?:there|team|all|folks|everyone))?[\s,.!?:;-]*", re.I)
_THANKS = re.compile(
    r"^\s*(?:(?:ok(?:ay)?|great|perfect|awesome|cool|nice|super|brilliant)[\s,.!]+)?"
    r"(?:thanks?(?: you)?(?: so much| a lot)?|thx|ty|cheers|much appreciated|appreciate it)"
    r"\b[\s,.!?:;-]*", re.I)
_DIGIT = re.compile(r"\d")
_STARTS_PHRASE = frozenset({"the", "a", "an", "your", "our", "my", "how", "what", "why", "when",
                            "where", "which", "who"})


@dataclass(frozen=True)
class Acknowledgment:
    """What the acknowledgment agent says first, and what it recognised."""

    #: The sentence to send before the answer.
    text: str
    #: Intent name from the catalog, or ``"unknown"``.
    intent: str
    #: The topic phrase the text names.
    topic: str
    #: Cosine similarity of the message to the intent (0 when unknown).
    similarity: float
    #: Escalation flags read from the message.
    flags: tuple[EscalationFlag, ...]


class AckAgent:
    """Picks a topic-specific acknowledgment, varied per session."""

    def __init__(self, embedder: Embedder, intents: IntentCatalog, *,
                 topics: TopicIndex | None = None, seed: int | None = None,
                 min_similarity: float = 0.4, sure_similarity: float = 0.65,
                 keyword_weight: float = 0.2, candidates: int = 5,
                 max_sessions: int = 10_000) -> None:
        self._embedder = embedder
        self._catalog = intents
        self._topics = topics
        self._rng = random.Random(seed)
        self._min_similarity = min_similarity
        self._sure_similarity = sure_similarity
        self._keyword_weight = keyword_weight
        self._candidates = candidates
        self._last: OrderedDict[str, str] = OrderedDict()
        self._max_sessions = max_sessions
        self._lock = threading.Lock()

    def acknowledge(self, text: str, *, session_key: str = "", titles: Sequence[str] = (),
                    flags: tuple[EscalationFlag, ...] | None = None) -> Acknowledgment:
        """The acknowledgment of one message (blocking: one embedding, a few ms).

        ``flags``: the message's escalation flags when the caller has read them already.
        ``titles``: titles of documents retrieval found for the turn, if known already.
        """
        flags = detect_flags(text) if flags is None else flags
        greeted = bool(_GREETING.match(text))
        after_greeting = _GREETING.sub("", text, count=1)
        thanked = bool(_THANKS.match(after_greeting))
        core = _THANKS.sub("", after_greeting, count=1).strip()

        if EscalationFlag.human_request in flags:
            return self._say("human_request", session_key, flags)
        serious = {EscalationFlag.threat, EscalationFlag.legal} & set(flags)
        if not content_words(core) and not serious:
            # Nothing topical ("hi", "thanks", "how long does that take?"): small talk, or a
            # follow-up whose topic only the retrieved titles can name.
            if greeted or thanked:
                return self._say("thanks" if thanked else "greeting", session_key, flags)
            if titles:
                return self._from_title(titles[0], session_key, flags)
            return self._neutral(None, session_key, flags)
        vector = self._embedder.embed_one(core)
        matches = self._catalog.match(vector)
        best = matches[0]
        topic = self._topic(core, vector)
        own = noun_phrase(core)
        angry = serious or EscalationFlag.anger in flags or (
            best.intent.name == "complaint" and best.similarity >= self._min_similarity)
        if angry:
            complaint = self._catalog.get("complaint")
            if complaint is not None:
                named = complaint.topic if serious or not (topic or own) else (
                    _as_object(topic[0].phrase) if topic else own)
                sim = topic[1] if topic else best.similarity
                return self._render(complaint, named or complaint.topic, sim, session_key,
                                    flags)
        if best.intent.name in ("greeting", "thanks") and best.similarity >= self._min_similarity \
                and len(content_words(core)) <= 2 and topic is None:
            return self._render(best.intent, best.intent.topic, best.similarity, session_key,
                                flags)
        if topic is not None:
            ack = self._kb_topic(topic, session_key, flags)
        elif titles and self._shares_words(core, titles[0]):
            ack = self._from_title(titles[0], session_key, flags)
        else:
            ack = self._neutral(own, session_key, flags)
        return self._greet(ack) if greeted else ack

    def _topic(self, core: str, vector: np.ndarray) -> tuple[Topic, float] | None:
        """The knowledge-base topic the message is about, if one is clearly close.

        Among the closest sections (their stored embeddings) whose title or heading shares
        a content word with the message, the best by similarity plus the share of the
        message's content words those labels contain names the one of the two that shares
        more of them (on a tie its title);
        with no such section, a very close one names its title.
        """
        if self._topics is None:
            return None
        words = {stem(w) for w in content_words(core)}
        matches = self._topics.match(vector, k=self._candidates)
        best: tuple[float, Topic, float] | None = None
        for match in matches:
            if match.similarity < self._min_similarity:
                break
            section = match.section
            shared = {t: len(words & {stem(w) for w in content_words(t.label)})
                      for t in (section.title, section.heading) if t is not None}
            if not any(shared.values()):
                continue
            labels = " ".join(t.label for t in shared)
            overlap = len(words & {stem(w) for w in content_words(labels)}) / max(len(words), 1)
            score = match.similarity + self._keyword_weight * overlap
            if best is None or score > best[0]:
                # the label with more of the message's words; on a tie the title
                named = max(shared, key=lambda t: (shared[t], t.kind == "title"))
                best = (score, named, match.similarity)
        if best is not None:
            return best[1], best[2]
        top = matches[0] if matches else None
        if top is not None and top.similarity >= self._sure_similarity and top.section.title:
            return top.section.title, top.similarity
        return None

    @staticmethod
    def _shares_words(text: str, label: str, words: set[str] | None = None) -> bool:
        words = words if words is not None else {stem(w) for w in content_words(text)}
        return bool(words & {stem(w) for w in content_words(label)})

    def _kb_topic(self, match: tuple[Topic, float], session_key: str,
                  flags: tuple[EscalationFlag, ...]) -> Acknowledgment:
        phrase = _as_object(match[0].phrase)
        if not phrase or _DIGIT.search(phrase):
            return self._neutral(None, session_key, flags)
        text = self._pick([t.replace("{topic}", phrase) for t in _KB_TOPIC], session_key)
        return Acknowledgment(text, "kb_topic", phrase, round(match[1], 4), flags)

    def _from_title(self, title: str, session_key: str,
                    flags: tuple[EscalationFlag, ...]) -> Acknowledgment:
        """Name the topic of a retrieved document: its indexed phrase, else its title."""
        phrase = next((t.phrase for t in (self._topics.topics if self._topics else ())
                       if t.label == title), None) or title_phrase(title)
        if not phrase:
            return self._neutral(None, session_key, flags)
        return self._neutral(_as_object(phrase), session_key, flags)

    def _say(self, name: str, session_key: str,
             flags: tuple[EscalationFlag, ...]) -> Acknowledgment:
        """An intent recognised by rule (an explicit request, a bare greeting): similarity 1."""
        intent = self._catalog.get(name)
        if intent is None:
            return self._neutral(None, session_key, flags)
        return self._render(intent, intent.topic, 1.0, session_key, flags)

    def _render(self, intent: Intent, topic: str, similarity: float, session_key: str,
                flags: tuple[EscalationFlag, ...]) -> Acknowledgment:
        options = [t.replace("{topic}", topic) for t in intent.acks]
        text = self._pick(options, session_key)
        return Acknowledgment(text, intent.name, topic, round(similarity, 4), flags)

    def _neutral(self, topic: str | None, session_key: str,
                 flags: tuple[EscalationFlag, ...]) -> Acknowledgment:
        if topic and not _DIGIT.search(topic):
            text = self._pick([t.replace("{topic}", topic) for t in _NEUTRAL_TOPIC], session_key)
            return Acknowledgment(text, "unknown", topic, 0.0, flags)
        return Acknowledgment(self._pick(list(_NEUTRAL), session_key), "unknown", "that", 0.0,
                              flags)

    def _greet(self, ack: Acknowledgment) -> Acknowledgment:
        text = f"Hi! {ack.text[0].upper()}{ack.text[1:]}"
        return Acknowledgment(text, ack.intent, ack.topic, ack.similarity, ack.flags)

    def _pick(self, options: list[str], session_key: str) -> str:
        """A random option that differs from this session's previous acknowledgment."""
        options = [o for o in options if not _DIGIT.search(o)] or list(_NEUTRAL)
        with self._lock:
            last = self._last.get(session_key)
            fresh = [o for o in options if o != last] or [o for o in _NEUTRAL if o != last]
            choice = self._rng.choice(fresh)
            self._last[session_key] = choice
            self._last.move_to_end(session_key)
            while len(self._last) > self._max_sessions:
                self._last.popitem(last=False)
        return choice



def _as_object(phrase: str | None) -> str | None:
    """A topic phrase as the object of "look up": "returns policy" → "the returns policy".

    A phrase that starts with a determiner, a wh-word, a gerund ("pairing bulbs") or a
    capitalised name ("Acme Cloud") is said as it is.
    """
    if not phrase:
        return None
    first = phrase.split()[0]
    if (first.lower() in _STARTS_PHRASE or first.endswith("ing") or first[:1].isupper()
            or phrase.endswith("?")):
        return phrase
    return f"the {phrase}"
