"""Text helpers and small talk: the cheap signals the agents run on every turn."""

from __future__ import annotations

import pytest

from agents.smalltalk import small_talk
from agents.text import content_words, keyword_tokens, noun_phrase, split_sentences, stem

pytestmark = pytest.mark.unit


def test_keyword_tokens_drop_stopwords_and_stem() -> None:
    assert keyword_tokens("How do I pair the new Bulbs?") == ["pair", "new", "bulb"]
    assert stem("returned") == stem("returns") == "return"


def test_content_words_drop_filler_verbs() -> None:
    assert content_words("I want some help with my router") == ["router"]


@pytest.mark.parametrize(("text", "phrase"), [
    ("do you sell lawnmowers?", "lawnmowers"),
    ("Can you help with my kitchen renovation?", "your kitchen renovation"),
    ("My garage door opener is broken", "your garage door opener"),
    ("I have a problem", None),
    ("how long does that take?", None),
    ("Do you ship the 2024 model?", "model"),
    ("What is your CEO's name?", "our CEO's name"),
])
def test_noun_phrase(text: str, phrase: str | None) -> None:
    assert noun_phrase(text) == phrase


def test_split_sentences_keeps_menu_paths_and_list_items() -> None:
    text = ("Open the app and go to Settings > Hub > Reconnect Wi-Fi. Your devices are kept.\n\n"
            "- Unplug the hub\n- Wait 10 seconds\n\nVisit lumora.com/returns, e.g. from a phone.")
    assert split_sentences(text) == [
        "Open the app and go to Settings > Hub > Reconnect Wi-Fi.",
        "Your devices are kept.",
        "Unplug the hub",
        "Wait 10 seconds",
        "Visit lumora.com/returns, e.g. from a phone.",
    ]


@pytest.mark.parametrize(("text", "kind"), [
    ("thanks!", "welcome"),
    ("Thank you so much", "welcome"),
    ("ok bye", "day"),
    ("Hello there", "Hello"),
    ("no thanks", "All right"),
])
def test_small_talk_replies(text: str, kind: str) -> None:
    reply = small_talk(text)
    assert reply is not None and kind in reply


@pytest.mark.parametrize("text", ["how do I reset it?", "Hi, my bulb won't pair", "yes",
                                  "thanks, and how do I pair a bulb?"])
def test_questions_are_not_small_talk(text: str) -> None:
    assert small_talk(text) is None
