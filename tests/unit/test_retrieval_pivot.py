"""A message that names its own topic is a new topic, however it starts ("And …", "Also …")."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.retrieval import SessionTopic
from agents.retrieval.contextualize import Contextualizer
from agents.retrieval.hybrid import KeywordIndex
from ingest.kb import KnowledgeBase

pytestmark = pytest.mark.unit

VENDOR = {p.stem: p.read_text(encoding="utf-8")
          for p in sorted((Path(__file__).parents[1] / "fixtures" / "kb_vendor").glob("*.md"))}
EXPORT = SessionTopic(anchor="How do I export my notes?", title="Exporting Notes",
                      doc_id="exporting-notes")


@pytest.fixture
def contextualizer(make_kb: Callable[..., KnowledgeBase]) -> Iterator[Contextualizer]:
    index = KeywordIndex(make_kb(VENDOR))
    index.rebuild()
    yield Contextualizer(index._kb, lambda: index.title_terms)
    index.close()


@pytest.mark.parametrize("text", [
    "And how do I turn on two-step login?",
    "Also, how do I turn on two-step login?",
    "and what integrations do you have?",
    "Oh and is there a free plan?",
])
def test_a_question_with_its_own_topic_is_not_a_follow_up(contextualizer: Contextualizer,
                                                          text: str) -> None:
    rewrite = contextualizer.rewrite(text, [], EXPORT, ())
    assert rewrite.kind in ("fresh", "pivot") and rewrite.query == text


@pytest.mark.parametrize("text", [
    "And how long does that take?",
    "and as PDF?",
    "And can I do it on the free plan?",
])
def test_fragments_and_pronouns_still_follow_up(contextualizer: Contextualizer,
                                                text: str) -> None:
    rewrite = contextualizer.rewrite(text, [], EXPORT, ())
    assert rewrite.follow_up, rewrite
