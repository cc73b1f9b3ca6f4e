"""Markdown-aware chunking: one chunk per section, long sections split at paragraphs.

A Markdown table becomes one line per row, each carrying its header
(``- Plan: Team; Monthly price: $8; Storage: 100 GB.``): a row can be found, quoted and
cited on its own, and a long table split between chunks keeps its meaning.

A chunk's id is derived from its document and its own text, so an UPDATE that leaves a
section unchanged keeps that chunk's id: only the changed sections are re-embedded, and
the ids that disappear are the stale chunks to delete.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_markdown", "tables_as_rows", "too_many_chunks"]

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(?:\|\s*:?-{1,}:?\s*)+\|?\s*$")
_EMPHASIS = re.compile(r"\*\*|__|`")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [_EMPHASIS.sub("", c).strip() for c in line.split("|")]


def _row(header: list[str], cells: list[str]) -> str:
    parts = [f"{h}: {c}" if h else c for h, c in zip(header, cells, strict=False) if c]
    text = "; ".join(parts)
    return f"- {text}" + ("" if text.endswith((".", "!", "?")) else ".")


def tables_as_rows(text: str) -> str:
    """Every Markdown table of ``text`` as one line per row, each with its header."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if (i + 1 < len(lines) and "|" in lines[i] and _TABLE_RULE.match(lines[i + 1])):
            header = _cells(lines[i])
            i += 2
            rows = []
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_row(header, _cells(lines[i])))
                i += 1
            if out and out[-1].strip():
                out.append("")
            out.extend(rows)
            out.append("")
            continue
        out.append(lines[i])
        i += 1
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrievable piece of a document."""

    chunk_id: str
    doc_id: str
    heading: str
    text: str
    position: int

    @property
    def embed_text(self) -> str:
        """What is embedded: the heading path gives a section its context."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def _sections(markdown: str) -> list[tuple[list[str], str]]:
    """(heading path, body) pairs in document order; fenced code is never a heading."""
    path: list[tuple[int, str]] = []
    out: list[tuple[list[str], str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        text = tables_as_rows("\n".join(body)).strip()
        if text:
            out.append(([h for _, h in path], text))
        body.clear()

    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, match.group(2).strip()))
        else:
            body.append(line)
    flush()
    return out


def _split(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ``max_chars``, cut at paragraphs, then sentences, then words."""
    if len(text) <= max_chars:
        return [text]
    units: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        if len(para) <= max_chars:
            units.append(para)
            continue
        for sentence in _SENTENCE_END.split(para):
            while len(sentence) > max_chars:
                cut = sentence.rfind(" ", 0, max_chars)
                cut = cut if cut > 0 else max_chars
                units.append(sentence[:cut])
                sentence = sentence[cut:].lstrip()
            if sentence:
                units.append(sentence)
    pieces: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current}\n\n{unit}" if current else unit
        if len(candidate) <= max_chars:
            current = candidate
        else:
            if current:
                pieces.append(current)
            current = unit
    if current:
        pieces.append(current)
    return pieces


def chunk_markdown(doc_id: str, markdown: str, *, title: str | None = None,
                   max_chars: int = 1200) -> list[Chunk]:
    """Chunks of a Markdown document, each headed by its title and section path."""
    sections = _sections(markdown)
    doc_title = title
    if sections and not doc_title and len(sections[0][0]) == 1:
        doc_title = sections[0][0][0]
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for headings, body in sections:
        trail = [h for h in headings if h != doc_title]
        heading = " > ".join(([doc_title] if doc_title else []) + trail)
        for piece in _split(body, max_chars):
            digest = hashlib.sha256(f"{heading}\n{piece}".encode()).hexdigest()[:16]
            seen[digest] = seen.get(digest, 0) + 1
            suffix = "" if seen[digest] == 1 else f"-{seen[digest]}"
            chunks.append(Chunk(f"{doc_id}:{digest}{suffix}", doc_id, heading, piece, len(chunks)))
    return chunks


def too_many_chunks(count: int, cap: int) -> str:
    """The refusal of a document cut into ``count`` chunks, over the ``cap``."""
    return (f"document of {count} chunks is over the cap of {cap} chunks "
            "(DUET_MAX_DOCUMENT_CHUNKS)")
