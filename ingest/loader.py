"""``duet load DIR``: a folder of Markdown/text files published as CREATE events.

This is the batch path into the knowledge base: each file becomes the document
``<relative path without extension>`` (slashes become dots), version 1 unless a newer
one is given. A repeated load is a no-op: the worker recognises unchanged content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client as NATS
from tqdm import tqdm

from core.errors import ValidationError
from ingest.events import DocumentEvent, DocumentMetadata, EventType
from ingest.publisher import publish_event

__all__ = ["events_from_directory", "load_directory"]

_SUFFIXES = {".md", ".markdown", ".txt"}
_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _doc_id(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    raw = ".".join(rel.parts)
    return re.sub(r"[^A-Za-z0-9_\-.]", "-", raw).strip(".-") or "doc"


def events_from_directory(root: Path, *, source: str = "cms", acl: list[str] | None = None,
                          version: int = 1, timestamp: datetime | None = None
                          ) -> Iterator[DocumentEvent]:
    """A CREATE event per Markdown/text file under ``root``, in path order."""
    if not root.is_dir():
        raise ValidationError(f"not a directory: {root}")
    stamp = timestamp or datetime.now(UTC)
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        match = _TITLE.search(text)
        title = match.group(1) if match else path.stem.replace("-", " ").capitalize()
        yield DocumentEvent(
            event_type=EventType.CREATE, doc_id=_doc_id(root, path), version=version,
            content=text, timestamp=stamp,
            metadata=DocumentMetadata(title=title, source=source, acl=acl or ["public"]),
        )


async def load_directory(nc: NATS, root: Path, *, source: str = "cms",
                         acl: list[str] | None = None, progress: bool = True) -> int:
    """Publish every file under ``root``; returns how many events were published."""
    events = list(events_from_directory(root, source=source, acl=acl))
    for event in tqdm(events, desc=f"publishing {root}", unit="doc", disable=not progress):
        await publish_event(nc, event)
    return len(events)
