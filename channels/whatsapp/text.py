"""Turning a reply into WhatsApp messages: splitting, and what events say in words."""

from __future__ import annotations

import re

__all__ = ["POLITE", "split_message"]

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")

#: What the customer is told for a message the channel cannot read.
POLITE = {
    "voice": "I can't listen to voice messages yet — could you type it?",
    "voice_unclear": "Sorry, I couldn't make out that voice message — could you type it?",
    "audio": "I can't listen to audio yet — could you type your question?",
    "default": "I can only read text messages for now — could you type your question?",
}


def _pieces(text: str) -> list[str]:
    """Sentences, each with the whitespace that follows it."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        out.append(text[start:match.end()])
        start = match.end()
    if start < len(text):
        out.append(text[start:])
    return out


def _hard_split(piece: str, limit: int) -> list[str]:
    """A piece longer than ``limit``: at the last space before it, else anywhere."""
    out = []
    while len(piece) > limit:
        cut = piece.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = limit
        out.append(piece[:cut])
        piece = piece[cut:].lstrip(" ")
    if piece:
        out.append(piece)
    return out


def split_message(text: str, limit: int = 4096) -> list[str]:
    """``text`` as messages of at most ``limit`` characters, cut between sentences (between
    words when one sentence is longer than a message)."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    messages: list[str] = []
    current = ""
    for sentence in _pieces(text):
        if len(current) + len(sentence.rstrip()) <= limit:
            current += sentence
            continue
        if current.strip():
            messages.append(current.strip())
        current = ""
        if len(sentence.rstrip()) > limit:
            *full, current = _hard_split(sentence.rstrip(), limit)
            messages.extend(full)
            current += " "
        else:
            current = sentence
    if current.strip():
        messages.append(current.strip())
    return messages
