"""The acknowledgment agent names the topic, never states facts, and varies its phrasing."""

from __future__ import annotations

import re

import pytest

from agents.ack import AckAgent
from agents.escalation import EscalationFlag
from agents.intents import IntentCatalog
from ingest.embeddings import OnnxEmbedder

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def catalog(embedder: OnnxEmbedder) -> IntentCatalog:
    return IntentCatalog.load(embedder)


@pytest.fixture
def ack(embedder: OnnxEmbedder, catalog: IntentCatalog) -> AckAgent:
    return AckAgent(embedder, catalog, seed=7)


@pytest.mark.parametrize(("question", "intent", "words"), [
    ("Can I return a bulb I opened last week?", "returns_policy", ("return",)),
    ("What is the return window for opened items?", "returns_policy", ("return",)),
    ("How do I factory reset my hub?", "hub_reset", ("resetting", "hub")),
    ("My new bulb won't pair with the app", "pairing_bulbs", ("pairing", "bulbs")),
    ("Do you ship to Canada?", "international_shipping", ("international shipping",)),
    ("How much does the Lumora Hub cost?", "pricing", ("prices",)),
    ("I lost my phone and can't get my 2FA code", "two_factor_authentication",
     ("two-factor",)),
    ("Where is my package? It was due yesterday", "order_tracking", ("order",)),
])
def test_names_the_topic(ack: AckAgent, question: str, intent: str,
                         words: tuple[str, ...]) -> None:
    result = ack.acknowledge(question, session_key="s")
    assert result.intent == intent
    assert all(w in result.text for w in words), result.text
    assert result.topic in result.text
    assert result.similarity >= 0.4


@pytest.mark.parametrize("question", [
    "How much is the Lumora Hub?", "What does a 4-pack of bulbs cost?",
    "how long is the warranty on the hub?", "order LUM-4821937 status please",
    "Do you ship to Germany and what does it cost in euros?", "do you sell lawnmowers?",
    "Can I return it after 45 days?", "What's the price of Lumora Plus per month?",
])
def test_never_states_facts(ack: AckAgent, question: str) -> None:
    text = ack.acknowledge(question, session_key="facts").text
    assert not re.search(r"\d|\$|€|£|\b(yes|no)\b", text, re.I), text
    assert len(text) < 120


def test_phrasing_varies_and_never_repeats_in_a_row(ack: AckAgent) -> None:
    texts = [ack.acknowledge("How do I reset the hub?", session_key="a").text
             for _ in range(12)]
    assert all(a != b for a, b in zip(texts, texts[1:], strict=False))
    assert len(set(texts)) >= 2
    # Another session keeps its own rotation.
    other = [ack.acknowledge("How do I reset the hub?", session_key="b").text for _ in range(4)]
    assert all(a != b for a, b in zip(other, other[1:], strict=False))


def test_greeting_and_thanks(ack: AckAgent) -> None:
    hello = ack.acknowledge("Hi there!", session_key="g")
    assert hello.intent == "greeting" and hello.text.startswith(("Hi", "Hello"))
    thanks = ack.acknowledge("thank you so much", session_key="g")
    assert thanks.intent == "thanks"
    assert any(w in thanks.text for w in ("welcome", "help"))


def test_greeting_with_a_question_names_the_question(ack: AckAgent) -> None:
    result = ack.acknowledge("Hi, my bulb won't pair", session_key="g2")
    assert result.intent == "pairing_bulbs"
    assert result.text.startswith("Hi!") and "pairing" in result.text


def test_low_similarity_uses_the_key_noun_phrase(ack: AckAgent) -> None:
    result = ack.acknowledge("Can you help with my kitchen renovation?", session_key="n")
    assert result.intent == "unknown"
    assert "your kitchen renovation" in result.text


def test_nothing_specific_gives_the_neutral_line(ack: AckAgent) -> None:
    texts = {ack.acknowledge("I have a problem", session_key="x").text for _ in range(6)}
    assert "Let me look into that for you." in texts
    assert all("problem" not in t for t in texts)


def test_titles_name_a_follow_up(ack: AckAgent) -> None:
    plain = ack.acknowledge("how long does that take?", session_key="t")
    assert plain.intent == "unknown" and plain.topic == "that"
    refined = ack.acknowledge("how long does that take?", session_key="t",
                              titles=["Resetting the Lumora Hub"])
    assert refined.intent == "hub_reset" and "resetting the hub" in refined.text


def test_flags_and_matching_acknowledgments(ack: AckAgent) -> None:
    human = ack.acknowledge("I want to talk to a human", session_key="f")
    assert human.flags == (EscalationFlag.human_request,)
    assert human.intent == "human_request" and "agent" in human.text
    angry = ack.acknowledge("This is ridiculous!!! my lights keep going offline",
                            session_key="f")
    assert EscalationFlag.anger in angry.flags
    assert angry.intent == "complaint"
    assert "sorry" in angry.text.lower() or "frustrating" in angry.text.lower()
    assert "offline" in angry.text
    legal = ack.acknowledge("I'll sue you", session_key="f")
    assert legal.flags == (EscalationFlag.legal,)
    assert "sue" not in legal.text

