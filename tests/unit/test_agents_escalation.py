"""Escalation flags read from a message, and the policy that turns them into a reason."""

from __future__ import annotations

import pytest

from agents.escalation import EscalationFlag, EscalationPolicy, detect_flags

pytestmark = pytest.mark.unit

F = EscalationFlag


@pytest.mark.parametrize(("text", "flag"), [
    ("I want to talk to a human", F.human_request),
    ("Can I speak to a real person?", F.human_request),
    ("agent", F.human_request),
    ("representative please", F.human_request),
    ("transfer me to customer service", F.human_request),
    ("Stop the bot, I need a person", F.human_request),
    ("Is there a human I can chat with?", F.human_request),
    ("this is ridiculous!!!", F.anger),
    ("I'm furious, the worst hub I ever bought", F.anger),
    ("WHY DOES NOTHING EVER WORK HERE", F.anger),
    ("this damn app", F.anger),
    ("I'll sue you", F.legal),
    ("my lawyer will hear about this", F.legal),
    ("I'm filing a chargeback", F.legal),
    ("I will report you to the BBB", F.legal),
    ("you'll regret this", F.threat),
    ("I know where you work", F.threat),
])
def test_flags_raised(text: str, flag: EscalationFlag) -> None:
    assert flag in detect_flags(text)


@pytest.mark.parametrize("text", [
    "how do I reset the hub",
    "is the log output human-readable?",
    "the hub is not a person, it's a device",
    "My LED is blinking and the GDPR page won't load",
    "worst case, can I still return it?",
    "Where is order LUM-4821937?",
    "Can I pair bulbs from another brand?",
    "I need to connect the hub to my router",
])
def test_no_false_positives(text: str) -> None:
    assert detect_flags(text) == ()


def test_flags_come_in_enum_order() -> None:
    flags = detect_flags("This is RIDICULOUS!!! I want a human or I'll call my lawyer")
    assert flags == (F.human_request, F.anger, F.legal)


def test_policy_escalates_immediate_flags_most_serious_first() -> None:
    policy = EscalationPolicy()
    assert policy.decide([F.human_request], 0.99, "answer") == "human_request"
    assert policy.decide([F.human_request, F.threat], 0.99, "answer") == "threat"
    assert policy.decide([F.legal], 0.99, "answer") == "legal"


def test_policy_anger_depends_on_confidence() -> None:
    policy = EscalationPolicy(anger_below=0.6)
    assert policy.decide([F.anger], 0.9, "answer") is None
    assert policy.decide([F.anger], 0.4, "answer") == "anger"


def test_policy_low_confidence_and_not_found() -> None:
    policy = EscalationPolicy()
    assert policy.decide([], 0.9, "answer") is None
    assert policy.decide([], 0.05, "fallback") == "not_found"
    assert policy.decide([F.low_confidence], 0.2, "fallback") == "low_confidence"
    assert policy.decide([F.not_found], 0.2, "fallback") == "not_found"
    # Asking back is not a failure.
    assert policy.decide([], 0.2, "clarify") is None


def test_policy_thresholds_are_configurable() -> None:
    strict = EscalationPolicy(low_confidence_below=0.8)
    assert strict.decide([], 0.7, "answer") == "low_confidence"
    relaxed = EscalationPolicy(immediate=(F.threat,))
    assert relaxed.decide([F.human_request], 0.9, "answer") is None
