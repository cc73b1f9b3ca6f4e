"""Escalation signals: flags read from a message, and the policy that turns them into a reason.

:func:`detect_flags` looks only at the customer's words (explicit requests for a person,
anger, threats, legal language); the retrieval agent adds ``low_confidence`` and
``not_found`` from its own decision. :class:`EscalationPolicy` decides whether a turn
should go to a human and says why; the human side (queue, supervisor) lives elsewhere.
:meth:`EscalationPolicy.confirm` applies what one turn cannot see: low confidence escalates
only when it lasts ``low_confidence_turns`` turns in a row. :class:`HumanOnlyTopics`
(``configs/human_only.yaml``) names topics the bot never answers on its own (legal threats,
account takeover, self-harm, chargebacks); :func:`wants_the_bot` reads a waiting customer's
wish to go back to the bot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml

__all__ = ["EscalationFlag", "EscalationPolicy", "HumanOnlyTopics", "detect_flags",
           "wants_the_bot"]

#: The bundled list of human-only topics.
HUMAN_ONLY_FILE = Path(__file__).resolve().parent.parent / "configs" / "human_only.yaml"


class EscalationFlag(StrEnum):
    """Why a conversation may need a person."""

    human_request = "human_request"
    anger = "anger"
    threat = "threat"
    legal = "legal"
    low_confidence = "low_confidence"
    not_found = "not_found"


_PERSON = (r"(?:a |an |the |some |one of your |your )?(?:real |live |actual |human |other )?"
           r"(?:human(?!-)|person|people|agent|representative|rep|operator|someone|somebody|"
           r"staff|manager|supervisor|customer service|support team|support staff|employee)s?\b")
_HUMAN_REQUEST = [
    # "talk to a human", "speak with someone", "transfer me to customer service"
    re.compile(r"\b(?:talk|speak|chat|connect|transfer|put|get)\b(?:\s+me)?\s+"
               r"(?:to|with|through to)\s+(?:\w+\s+){0,3}?" + _PERSON, re.I),
    # "I want a human", "I need a real person", "give me an agent"
    re.compile(r"\b(?:want|need|give me|get me|request|prefer)\s+(?:to\s+(?:talk|speak)\s+to\s+)?"
               + _PERSON, re.I),
    # "is there a human I can chat with?", "are there real people here?"
    re.compile(r"\b(?:is|are) there (?:a |an |any )?(?:real |live |actual )?"
               r"(?:human(?!-)|person|people|agent|representative)s?\b", re.I),
    # "real person", "live agent" anywhere
    re.compile(r"\b(?:real|live|actual) (?:human(?!-)|person|agent|representative)\b", re.I),
    # the whole message is a request word: "agent", "human please", "representative!"
    re.compile(r"^\s*(?:(?:an?|the)\s+)?(?:human|agent|representative|operator|person)"
               r"(?:\s+please)?\s*[.!?]*\s*$", re.I),
    re.compile(r"\b(?:human|agent|representative|operator)\s+please\b", re.I),
    re.compile(r"\bstop the bot\b|\bnot (?:a|the) bot\b|\bno more bot\b", re.I),
]

_PROFANITY = re.compile(
    r"\b(?:f+u+c+k\w*|sh[i1]t\w*|bullshit|crap(?:py)?|damn(?:ed|it)?|wtf|ffs|bs|screw you|"
    r"piss(?:ed)?|bastard\w*|ass(?:hole)?s?|dick|suck(?:s|ed)?)\b", re.I)
_ANGER_WORDS = re.compile(
    r"\b(?:ridiculous|furious|outrag(?:ed|eous)|unacceptable|pathetic|useless|disgust(?:ed|ing)|"
    r"angry|livid|infuriat\w+|fed up|sick (?:and tired )?of|incompetent|scam(?:med)?|"
    r"rip[- ]?off|(?:terrible|horrible|awful|lousy) (?:service|support|company|product)|"
    r"joke of a|worst(?! case))\b", re.I)
_EXCLAIMS = re.compile(r"!{2,}|[!?]{3,}")
_THREAT = re.compile(
    r"\b(?:i(?:'ll| will| am going to|'m going to|m gonna|'m gonna) "
    r"(?:kill|hurt|destroy|find|come (?:to|after|for)|burn|smash|get) you\w*|"
    r"you(?:'ll| will) (?:regret|pay for|be sorry)|watch your back|"
    r"i know where you (?:live|work)|bomb|shoot(?:ing)?\s+(?:you|up)|burn (?:it|you|the \w+) down)\b",
    re.I)
_LEGAL = re.compile(
    r"\b(?:lawyers?|attorneys?|attorney general|su(?:e|ing|ed)|lawsuit|legal action|"
    r"take (?:you|this) to court|court|small claims|class action|charge ?backs?|"
    r"dispute (?:the|this) charge|bbb|better business bureau|consumer protection|ftc|"
    r"trading standards|ombudsman)\b", re.I)
_WORD = re.compile(r"[A-Za-z]{3,}")
# Acronyms that are shouted by nobody: product codes and common abbreviations.
_ACRONYMS = frozenset({"LED", "USB", "SKU", "USA", "GDPR", "SMS", "FAQ", "APP", "GHZ",
                       "PIN", "ETA", "UPS", "DHL", "FEDEX", "USPS", "PDF", "CEO", "BBB", "FTC"})


def _shouting(text: str) -> bool:
    words = [w for w in _WORD.findall(text) if w.upper() not in _ACRONYMS]
    caps = [w for w in words if w.isupper()]
    return len(caps) >= 3 and len(caps) >= 0.6 * len(words)


def detect_flags(text: str) -> tuple[EscalationFlag, ...]:
    """The escalation flags a message raises, in :class:`EscalationFlag` order (may be empty)."""
    flags: list[EscalationFlag] = []
    if any(p.search(text) for p in _HUMAN_REQUEST):
        flags.append(EscalationFlag.human_request)
    if (_PROFANITY.search(text) or _ANGER_WORDS.search(text) or _shouting(text)
            or _EXCLAIMS.search(text)):
        flags.append(EscalationFlag.anger)
    if _THREAT.search(text):
        flags.append(EscalationFlag.threat)
    if _LEGAL.search(text):
        flags.append(EscalationFlag.legal)
    return tuple(flags)


@dataclass(frozen=True)
class EscalationPolicy:
    """When a turn goes to a person; thresholds are confidences in [0, 1]."""

    #: Flags that escalate on their own, most serious first.
    immediate: tuple[EscalationFlag, ...] = (
        EscalationFlag.threat, EscalationFlag.legal, EscalationFlag.human_request,
    )
    #: An angry customer escalates when the answer's confidence is below this.
    anger_below: float = 0.6
    #: A fallback answer escalates as ``not_found`` below this confidence...
    not_found_below: float = 0.15
    #: ...and as ``low_confidence`` below this one.
    low_confidence_below: float = 0.25
    #: Decisions that never escalate on confidence alone (asking back is not failing).
    patient_decisions: frozenset[str] = field(default_factory=lambda: frozenset({"clarify"}))
    #: Low confidence (``low_confidence``, ``not_found``) escalates after this many turns
    #: in a row.
    low_confidence_turns: int = 2

    def confirm(self, reason: str | None, low_streak: int) -> tuple[str | None, int]:
        """The reason a finished turn escalates with, given how many turns in a row before
        it had low confidence; returns it (or None) and the new count."""
        if reason in (EscalationFlag.low_confidence.value, EscalationFlag.not_found.value):
            streak = low_streak + 1
            return (reason if streak >= self.low_confidence_turns else None), streak
        return reason, 0

    def decide(self, flags: Iterable[EscalationFlag], confidence: float,
               decision: str) -> str | None:
        """The reason to escalate (a flag's value), or ``None`` to let the bot answer."""
        present = set(flags)
        for flag in self.immediate:
            if flag in present:
                return flag.value
        if EscalationFlag.anger in present and confidence < self.anger_below:
            return EscalationFlag.anger.value
        if decision in self.patient_decisions:
            return None
        if EscalationFlag.not_found in present or (
                decision == "fallback" and confidence < self.not_found_below):
            return EscalationFlag.not_found.value
        if EscalationFlag.low_confidence in present or confidence < self.low_confidence_below:
            return EscalationFlag.low_confidence.value
        return None


class HumanOnlyTopics:
    """Topics a person handles: the bot does not answer them, it brings one in."""

    def __init__(self, topics: Mapping[str, Iterable[str]]) -> None:
        self._topics = [(name, re.compile("|".join(f"(?:{p})" for p in patterns), re.I))
                        for name, patterns in topics.items() if patterns]

    @classmethod
    def load(cls, path: Path | None = None) -> HumanOnlyTopics:
        """From a YAML file ``topics: {name: [regex, ...]}`` (default: the bundled one)."""
        data = yaml.safe_load((path or HUMAN_ONLY_FILE).read_text()) or {}
        topics = data.get("topics") or {}
        if not isinstance(topics, dict):
            raise ValueError(f"{path}: `topics` must map names to lists of patterns")
        return cls({str(k): [str(p) for p in (v or [])] for k, v in topics.items()})

    @property
    def names(self) -> list[str]:
        """The topics, in file order."""
        return [name for name, _ in self._topics]

    def match(self, text: str) -> str | None:
        """The first topic ``text`` raises, or None."""
        for name, pattern in self._topics:
            if pattern.search(text):
                return name
        return None


_BACK_TO_BOT = re.compile(
    r"\b(?:(?:go |get |take me |switch )?back to (?:the |your )?(?:bot|assistant|ai)|"
    r"never ?mind|nevermind|cancel (?:the |my )?(?:request|handoff|escalation)|"
    r"(?:talk|chat|continue) (?:to|with) (?:the |your )?(?:bot|assistant|ai))\b", re.I)


def wants_the_bot(text: str) -> bool:
    """Whether a waiting customer asks to go back to the bot."""
    return bool(_BACK_TO_BOT.search(text))
