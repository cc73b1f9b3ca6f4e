"""The acknowledgment agent: a short, specific first reply within milliseconds.

It names what the customer asked about ("Let me check our return policy for you.") and
never states a fact: the grounded answer follows in the same reply. The topic comes from
the intent catalog (similarity to each intent's example centroid), optionally refined by
the titles retrieval has already found; a message no intent matches is acknowledged with
its own key noun phrase, or a neutral line. Templates rotate per session and the same
text is never used twice in a row. One call embeds one short text (~3 ms): call it off
the event loop like any other model call.
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
from agents.intents import Intent, IntentCatalog, IntentMatch
from agents.text import content_words, noun_phrase, title_phrase
from ingest.embeddings import Embedder

__all__ = ["AckAgent", "Acknowledgment"]

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
    r"(?:\s+(?:there|lumora|team|all|folks))?[\s,.!?:;-]*", re.I)
_THANKS = re.compile(
    r"^\s*(?:(?:ok(?:ay)?|great|perfect|awesome|cool|nice|super|brilliant)[\s,.!]+)?"
    r"(?:thanks?(?: you)?(?: so much| a lot)?|thx|ty|cheers|much appreciated|appreciate it)"
    r"\b[\s,.!?:;-]*", re.I)
_DIGIT = re.compile(r"\d")


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
    """Picks an intent-specific acknowledgment, varied per session."""

    def __init__(self, embedder: Embedder, intents: IntentCatalog, *, seed: int | None = None,
                 min_similarity: float = 0.5, clear_margin: float = 0.1,
                 title_weight: float = 0.3, max_sessions: int = 10_000) -> None:
        self._embedder = embedder
        self._catalog = intents
        self._rng = random.Random(seed)
        self._min_similarity = min_similarity
        self._title_weight = title_weight
        self._clear_margin = clear_margin
        self._last: OrderedDict[str, str] = OrderedDict()
        self._max_sessions = max_sessions
        self._lock = threading.Lock()
        self._kb_names = [i.name for i in intents.intents if not i.social]

    def acknowledge(self, text: str, *, session_key: str = "", titles: Sequence[str] = (),
                    flags: tuple[EscalationFlag, ...] | None = None) -> Acknowledgment:
        """The acknowledgment of one message (blocking: one embedding, a few ms).

        ``flags``: the message's escalation flags when the caller has read them already.
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
        by_name = {m.intent.name: m for m in matches}
        topic_match = self._topic_match(vector, titles)

        angry = serious or EscalationFlag.anger in flags or (
            matches[0].intent.name == "complaint" and matches[0].similarity >= self._min_similarity)
        if angry:
            complaint = self._catalog.get("complaint")
            if complaint is not None:
                topic = complaint.topic if serious or not topic_match else topic_match.intent.topic
                sim = topic_match.similarity if topic_match else by_name["complaint"].similarity
                return self._render(complaint, topic, sim, session_key, flags)
        best = matches[0]
        if best.intent.name in ("greeting", "thanks") and best.similarity >= self._min_similarity \
                and len(content_words(core)) <= 2:
            return self._render(best.intent, best.intent.topic, best.similarity, session_key, flags)
        if topic_match is not None:
            ack = self._render(topic_match.intent, topic_match.intent.topic,
                               topic_match.similarity, session_key, flags)
            return self._greet(ack) if greeted else ack
        if titles:
            return self._from_title(titles[0], session_key, flags)
        return self._neutral(noun_phrase(core), session_key, flags)

    def _from_title(self, title: str, session_key: str,
                    flags: tuple[EscalationFlag, ...]) -> Acknowledgment:
        """Name the topic of a retrieved document: its intent's topic, else its title."""
        best = self._catalog.match(self._embedder.embed_one(title), names=self._kb_names)[0]
        if best.similarity >= self._min_similarity:
            return self._render(best.intent, best.intent.topic, best.similarity, session_key,
                                flags)
        return self._neutral(title_phrase(title), session_key, flags)

    def _topic_match(self, vector: np.ndarray, titles: Sequence[str]) -> IntentMatch | None:
        """The knowledge-base intent of the message, refined by known titles."""
        matches = self._catalog.match(vector, names=self._kb_names)
        if not titles:
            best, runner_up = matches[0], matches[1] if len(matches) > 1 else None
            # Accept a weaker match when it stands clearly apart from the next intent.
            clear = runner_up is None or best.similarity - runner_up.similarity >= self._clear_margin
            if best.similarity >= self._min_similarity or (
                    clear and best.similarity >= self._min_similarity - 0.1):
                return best
            return None
        title_vec = self._embedder.embed_one(titles[0])
        by_title = {m.intent.name: m.similarity
                    for m in self._catalog.match(title_vec, names=self._kb_names)}
        scored = sorted(matches, key=lambda m: m.similarity
                        + self._title_weight * by_title[m.intent.name], reverse=True)
        best = scored[0]
        if best.similarity >= self._min_similarity or (
                by_title[best.intent.name] >= self._min_similarity
                and best.similarity >= self._min_similarity - 0.15):
            return best
        return None

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

