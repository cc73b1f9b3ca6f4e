"""Follow-up or new topic, and the rewrite of a follow-up into a self-contained query."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from agents.retrieval import SessionTopic
from agents.retrieval.contextualize import Contextualizer, entity_phrase
from agents.retrieval.hybrid import KeywordIndex
from core.settings import CONFIGS_DIR
from ingest.kb import KnowledgeBase

pytestmark = pytest.mark.unit

MakeKb = Callable[..., KnowledgeBase]
DOCS = ("hub-reset", "pairing-bulbs", "voice-assistants", "returns-policy", "hub-setup")
TERMS = frozenset({"hub", "lumora", "bulb", "light", "strip", "return", "order", "alexa"})


@pytest.fixture
def contextualizer(make_kb: MakeKb) -> Iterator[Contextualizer]:
    kb = make_kb({d: (CONFIGS_DIR / "sample_kb" / f"{d}.md").read_text(encoding="utf-8")
                  for d in DOCS})
    index = KeywordIndex(kb)
    index.rebuild()
    yield Contextualizer(kb, lambda: index.title_terms)
    index.close()


HUB = SessionTopic(anchor="How do I reset the hub?", title="Resetting the Lumora Hub",
                   doc_id="hub-reset")


@pytest.mark.parametrize(("text", "phrase"), [
    ("How do I reset the hub?", "the hub"),
    ("Resetting the Lumora Hub", "the Lumora Hub"),
    ("My bulbs won't pair", "my bulbs"),
    ("Can I return my light strip?", "my light strip"),
    ("nothing to see here", None),
])
def test_entity_phrase(text: str, phrase: str | None) -> None:
    assert entity_phrase(text, frozenset(TERMS)) == phrase


def test_without_a_topic_everything_is_fresh(contextualizer: Contextualizer) -> None:
    rewrite = contextualizer.rewrite("how long does that take?", [], None, ())
    assert (rewrite.kind, rewrite.query, rewrite.follow_up) == (
        "fresh", "how long does that take?", False)


@pytest.mark.parametrize(("text", "kind", "query"), [
    ("how do I reset it?", "substitute", "how do I reset the hub?"),
    ("can I return it?", "substitute", "can I return the hub?"),
    ("how long does that take?", "context", "How do I reset the hub? how long does that take?"),
    ("does it delete my lights?", "context",
     "How do I reset the hub? does it delete my lights?"),
    ("and the bulbs?", "context", "How do I reset the hub? and the bulbs?"),
    ("what about after that?", "context", "How do I reset the hub? what about after that?"),
])
def test_follow_ups_are_completed(contextualizer: Contextualizer, text: str, kind: str,
                                  query: str) -> None:
    rewrite = contextualizer.rewrite(text, [], HUB, ())
    assert (rewrite.kind, rewrite.query) == (kind, query)
    assert rewrite.follow_up and rewrite.anchor == HUB.anchor


@pytest.mark.parametrize("text", [
    "also, my bulbs won't pair",
    "Does Lumora work with Alexa and Google Home?",
    "What is your return window for opened items?",
])
def test_new_topics_start_fresh(contextualizer: Contextualizer, text: str) -> None:
    rewrite = contextualizer.rewrite(text, [], HUB, ())
    assert rewrite.query == text and not rewrite.follow_up


def test_a_bare_noun_phrase_answers_a_clarifying_question(
        contextualizer: Contextualizer) -> None:
    asked = SessionTopic(anchor="how do I reset it?", decision="clarify")
    rewrite = contextualizer.rewrite("the hub", [], asked, ())
    assert (rewrite.kind, rewrite.query) == ("clarify_reply", "how do I reset the hub?")


def test_topic_from_history_when_the_session_has_no_memory(
        contextualizer: Contextualizer) -> None:
    history = [("user", "How do I reset the hub?"), ("assistant", "Press and hold …"),
               ("user", "how long does that take?"), ("assistant", "About 5 minutes.")]
    rewrite = contextualizer.rewrite("can I return it?", history, None, ())
    assert rewrite.query == "can I return the hub?"


def test_short_messages_without_a_product(contextualizer: Contextualizer) -> None:
    # Nothing but the topic to go on.
    assert contextualizer.rewrite("how much?", [], HUB, ()).follow_up
    # Closer to what the knowledge base says about it than to the topic: a new question,
    # and the search made to decide is reused.
    fresh = contextualizer.rewrite("Can I pay in installments?", [], HUB, ())
    assert not fresh.follow_up and fresh.probe is not None


@pytest.mark.parametrize("text", ["Is it too late to cancel?", "it's possible to pay later?"])
def test_impersonal_it_is_not_a_reference(contextualizer: Contextualizer, text: str) -> None:
    assert not contextualizer.rewrite(text, [], HUB, ()).follow_up


def test_small_talk_is_neither(contextualizer: Contextualizer) -> None:
    rewrite = contextualizer.rewrite("thanks a lot!", [], HUB, ())
    assert rewrite.kind == "social" and rewrite.query == "thanks a lot!"


def test_a_definite_noun_of_the_last_topic_makes_a_follow_up() -> None:
    from agents.retrieval.cache import SessionTopic
    from agents.retrieval.contextualize import _shares_topic_word

    topic = SessionTopic(anchor="How do I reset a bulb?", title="Resetting a Bulb")
    assert _shares_topic_word("What do I do after the reset?", topic)
    assert not _shares_topic_word("How long does the refund take?", topic)
