"""The acknowledgment agent names the live knowledge base's topics, never states facts,
never names what is neither in the message nor in the knowledge base, and varies its phrasing.

The knowledge base here is a software vendor's (``tests/fixtures/kb_vendor``), not the
bundled sample: the agent knows nothing of either beforehand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.ack import AckAgent
from agents.escalation import EscalationFlag
from agents.intents import IntentCatalog
from agents.text import content_words, stem
from ingest.embeddings import OnnxEmbedder
from ingest.freshness import FreshnessProfiles
from ingest.kb import KnowledgeBase
from ingest.store import ChromaStore, Tier
from tests.conftest import index_markdown

pytestmark = pytest.mark.unit

VENDOR = {p.stem: p.read_text(encoding="utf-8")
          for p in sorted((Path(__file__).parents[1] / "fixtures" / "kb_vendor").glob("*.md"))}


@pytest.fixture(scope="module")
def catalog(embedder: OnnxEmbedder) -> IntentCatalog:
    return IntentCatalog.load(embedder)


@pytest.fixture(scope="module")
def shared_kb(embedder: OnnxEmbedder, tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    store = ChromaStore(path=tmp_path_factory.mktemp("vendor") / "chroma", prefix="vendor")
    index_markdown(store, embedder, VENDOR)
    kb = KnowledgeBase(store, embedder, FreshnessProfiles())
    kb.topics.rebuild()
    yield kb
    kb.topics.close()


@pytest.fixture
def kb(make_kb: Callable[..., KnowledgeBase]) -> KnowledgeBase:
    """A knowledge base of its own, for a test that changes it."""
    kb = make_kb(VENDOR)
    kb.topics.rebuild()
    yield kb
    kb.topics.close()


@pytest.fixture
def ack(embedder: OnnxEmbedder, catalog: IntentCatalog, shared_kb: KnowledgeBase) -> AckAgent:
    return AckAgent(embedder, catalog, topics=shared_kb.topics, seed=7)


def test_the_catalog_holds_no_knowledge(catalog: IntentCatalog) -> None:
    assert {i.name for i in catalog.intents} == {"greeting", "thanks", "human_request",
                                                 "complaint"}


@pytest.mark.parametrize(("question", "words"), [
    ("Is there a free plan?", ("free plan",)),
    ("How do I turn on two-step login?", ("two-step login",)),
    ("Do you integrate with Slack?", ("integrations",)),
    ("How long does an export take?", ("export",)),
    ("How much is the Team plan per month?", ("plans and pricing",)),
])
def test_names_the_knowledge_base_topic(ack: AckAgent, question: str,
                                        words: tuple[str, ...]) -> None:
    result = ack.acknowledge(question, session_key="s")
    assert result.intent == "kb_topic", result
    assert all(w in result.text.lower() for w in words), result.text
    assert result.topic in result.text


QUESTIONS = [
    "Is there a free plan?", "Do you integrate with Salesforce?", "How much is the Team plan?",
    "Can I pay with PayPal?", "Do you have a mobile app for Android?", "How do I reset my password?",
    "What's your refund policy?", "Is my data encrypted at rest?", "Can I export to Word?",
    "I lost my phone and can't sign in", "Do you offer discounts for nonprofits?",
    "How do I cancel my subscription?", "Where are your servers located?",
]


@pytest.mark.parametrize("question", QUESTIONS)
def test_names_nothing_the_message_and_the_knowledge_base_lack(ack: AckAgent,
                                                              question: str) -> None:
    text = ack.acknowledge(question, session_key="n").text
    known = {stem(w) for w in content_words(question + " " + " ".join(VENDOR.values()))}
    said = {stem(w) for w in content_words(text)} - {stem(w) for w in content_words(
        "let me look up check one moment while pulling now into for you on that")}
    assert said <= known, (text, said - known)
    assert not re.search(r"\d|\$|€|£|\b(yes|no)\b", text, re.I), text


def test_follows_the_knowledge_base_as_it_changes(embedder: OnnxEmbedder,
                                                  catalog: IntentCatalog,
                                                  kb: KnowledgeBase) -> None:
    ack = AckAgent(embedder, catalog, topics=kb.topics, seed=7)
    assert ack.acknowledge("How long does an export take?").intent == "kb_topic"
    ids = [cid for cid in kb.store.all_ids(Tier.hot) if cid.startswith("exporting-notes:")]
    kb.store.delete(Tier.hot, ids)
    kb.note_change("exporting-notes")
    kb.topics.rebuild()
    assert all(t.doc_id != "exporting-notes" for t in kb.topics.topics)
    gone = ack.acknowledge("How long does an export take?", session_key="g")
    assert "exporting" not in gone.text.lower()


def test_private_documents_are_never_named(embedder: OnnxEmbedder, catalog: IntentCatalog,
                                           make_kb: Callable[..., KnowledgeBase]) -> None:
    kb = make_kb({"secret": "# Project Falcon Roadmap\n\nProject Falcon ships a new "
                            "billing engine to enterprise customers next quarter."},
                 acl=["staff"])
    kb.topics.rebuild()
    agent = AckAgent(embedder, catalog, topics=kb.topics, seed=1)
    result = agent.acknowledge("When does the new billing engine ship?")
    assert result.intent != "kb_topic" and "Falcon" not in result.text
    kb.topics.close()


def test_an_empty_knowledge_base_uses_the_customers_words(ack: AckAgent,
                                                         embedder: OnnxEmbedder,
                                                         catalog: IntentCatalog) -> None:
    bare = AckAgent(embedder, catalog, seed=3)
    result = bare.acknowledge("Can you help with my kitchen renovation?", session_key="k")
    assert result.intent == "unknown" and "your kitchen renovation" in result.text


def test_phrasing_varies_and_never_repeats_in_a_row(ack: AckAgent) -> None:
    texts = [ack.acknowledge("Is there a free plan?", session_key="a").text for _ in range(12)]
    assert all(a != b for a, b in zip(texts, texts[1:], strict=False))
    assert len(set(texts)) >= 2


def test_greeting_and_thanks(ack: AckAgent) -> None:
    hello = ack.acknowledge("Hi there!", session_key="g")
    assert hello.intent == "greeting" and hello.text.startswith(("Hi", "Hello"))
    thanks = ack.acknowledge("thank you so much", session_key="g")
    assert thanks.intent == "thanks"
    assert any(w in thanks.text for w in ("welcome", "help"))


def test_greeting_with_a_question_names_the_question(ack: AckAgent) -> None:
    result = ack.acknowledge("Hi, is there a free trial?", session_key="g2")
    assert result.text.startswith("Hi!") and "free trial" in result.text.lower()


def test_nothing_specific_gives_the_neutral_line(ack: AckAgent) -> None:
    texts = {ack.acknowledge("I have a problem", session_key="x").text for _ in range(6)}
    assert "Let me look into that for you." in texts
    assert all("problem" not in t for t in texts)


def test_titles_name_a_follow_up(ack: AckAgent) -> None:
    plain = ack.acknowledge("how long does that take?", session_key="t")
    assert plain.intent == "unknown" and plain.topic == "that"
    refined = ack.acknowledge("how long does that take?", session_key="t",
                              titles=["Exporting Notes"])
    assert "exporting notes" in refined.text.lower()


def test_flags_and_matching_acknowledgments(ack: AckAgent) -> None:
    human = ack.acknowledge("I want to talk to a human", session_key="f")
    assert human.flags == (EscalationFlag.human_request,)
    assert human.intent == "human_request" and "agent" in human.text
    angry = ack.acknowledge("This is ridiculous!!! my export keeps failing", session_key="f")
    assert EscalationFlag.anger in angry.flags
    assert angry.intent == "complaint"
    assert "sorry" in angry.text.lower() or "frustrating" in angry.text.lower()
    assert "export" in angry.text.lower()
    legal = ack.acknowledge("I'll sue you", session_key="f")
    assert legal.flags == (EscalationFlag.legal,)
    assert "sue" not in legal.text
