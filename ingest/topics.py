"""The knowledge base's topics: document titles and section headings, as indexed right now.

The acknowledgment agent names what a customer asks about from this index, so it can
only ever name something the knowledge base holds (or the customer said). A topic is a
title ("Returns Policy") or a section heading ("Cancelling an order"), said in a sentence
the way the knowledge base writes it: a title word the articles themselves write in lower
case ("Returns" → "returns") is lowered, a word they capitalise mid-sentence (a product
or company name) keeps its capital.

A message is matched to *sections*, not to the bare labels: each row of the index is a
public chunk with the embedding the ingest worker already stored (heading path and
text), so the section whose content answers the message is found as well as retrieval
finds it, and its title or heading is what may be named. A short label alone embeds
poorly ("How much does the hub cost?" is closer to "Setting up the hub" than to
"Pricing"); a section's content does not. One matrix product over the rows (~1 ms at
10k chunks).

Only public chunks contribute (the acknowledgment is said before any ACL check could
tell whom it is for); headings with digits are skipped (an acknowledgment states no
facts), and so are generic ones ("Overview", "Steps") and questions (a FAQ title
"How do I …?" is not a phrase to say back).

The index follows the store: :meth:`TopicIndex.note_change` (fed by the ingest worker and
the registry watch) marks a document for re-reading and starts a background pass that
rebuilds until nothing is left to read — at most once a second and at most 5 % of a core,
so a burst of changes costs one rebuild, and never on a turn's path (a rebuild started by
an acknowledgment measurably delayed the answer of the same turn). A rebuild lists the
chunk ids of both tiers and re-reads only the documents whose ids changed (ids are
content-addressed) or that were reported changed (an ACL change keeps the ids).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from core.tasks import failure_of
from ingest.embeddings import Embedder
from ingest.store import StoredChunk, Tier, VectorStore

__all__ = ["Section", "Topic", "TopicIndex", "TopicMatch", "say"]

log = logging.getLogger("duet.ingest")

_PUBLIC = "public"
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_GENERIC = frozenset({
    "overview", "introduction", "summary", "steps", "details", "notes", "note", "faq", "faqs",
    "general", "more", "information", "info", "background", "examples", "example", "answer",
    "answers", "question", "questions", "contents", "appendix", "references", "see also",
    "related", "tips", "misc", "other", "help", "support", "about",
})


@dataclass(frozen=True)
class Topic:
    """One title or section heading of an indexed, public document."""

    #: The title or heading as written.
    label: str
    #: How a sentence says it ("returns policy", "Acme Cloud").
    phrase: str
    doc_id: str
    #: "title" or "heading".
    kind: str


@dataclass(frozen=True)
class Section:
    """A public section of a document: what the acknowledgment may name for it."""

    doc_id: str
    #: The document's title, if it can be said.
    title: Topic | None
    #: The section's own heading, if it can be said.
    heading: Topic | None


@dataclass(frozen=True)
class TopicMatch:
    """A section and a message's cosine similarity to it."""

    section: Section
    similarity: float


@dataclass(frozen=True)
class _Doc:
    chunk_ids: frozenset[str]
    rows: tuple[tuple[Section, np.ndarray], ...]
    #: what its topics depend on besides the text: (chunk id, public, title, heading)
    signature: frozenset[tuple[str, bool, str, str]] = frozenset()


def _signature(chunks: Iterable[StoredChunk]) -> frozenset[tuple[str, bool, str, str]]:
    return frozenset((c.chunk_id, _PUBLIC in (c.metadata.get("acl") or ()),
                      str(c.metadata.get("title") or ""), str(c.metadata.get("heading") or ""))
                     for c in chunks)


@dataclass(frozen=True)
class _Snapshot:
    sections: tuple[Section, ...]
    vectors: np.ndarray
    topics: tuple[Topic, ...]


def _doc_of(chunk_id: str) -> str:
    return chunk_id.rsplit(":", 1)[0]


def _casing(texts: Iterable[str]) -> tuple[Counter[str], Counter[str]]:
    """Lower-case and mid-sentence capitalised occurrences of each word (lower-cased)."""
    lower: Counter[str] = Counter()
    capital: Counter[str] = Counter()
    for text in texts:
        for sentence in re.split(r"(?<=[.!?:])\s+|\n+", text):
            for i, word in enumerate(_WORD.findall(sentence)):
                if word.islower():
                    lower[word] += 1
                elif i > 0 and word[0].isupper():
                    capital[word.lower()] += 1
    return lower, capital


def say(label: str, lower: Counter[str], capital: Counter[str]) -> str:
    """A title or heading as said inside a sentence, cased as the articles write its words."""
    words = label.strip().rstrip(":?.!").split()
    out = []
    for word in words:
        key = word.lower()
        proper = (word.isupper() and len(word) > 1) or capital[key] > lower[key] or (
            word[:1].isupper() and not lower[key] and capital[key])
        out.append(word if proper or not word[:1].isupper() else word[:1].lower() + word[1:])
    return " ".join(out)


_QUESTION_START = frozenset({
    "how", "what", "why", "when", "where", "which", "who", "can", "could", "is", "are", "do",
    "does", "did", "should", "will", "would", "i", "my"})


def _usable(label: str) -> bool:
    """A label that can be said as a topic: short, no digits, not generic, not a question."""
    words = label.lower().split()
    return (bool(words) and not any(c.isdigit() for c in label) and len(words) <= 8
            and not label.rstrip().endswith("?") and words[0] not in _QUESTION_START
            and not all(w.strip(":?.!,") in _GENERIC for w in words))


def _rows(doc_id: str, chunks: list[StoredChunk]) -> tuple[tuple[Section, np.ndarray], ...]:
    """One row per public chunk of a document: its section and its stored embedding."""
    public = [c for c in chunks if _PUBLIC in (c.metadata.get("acl") or ())
              and c.embedding is not None]
    if not public:
        return ()
    lower, capital = _casing(c.text for c in public)

    def topic(label: str, kind: str) -> Topic | None:
        label = label.strip()
        return Topic(label, say(label, lower, capital), doc_id, kind) if _usable(label) else None

    title_label = str(public[0].metadata.get("title") or "").strip()
    title = topic(title_label, "title") if title_label else None
    rows = []
    for chunk in sorted(public, key=lambda c: int(c.metadata.get("position", 0))):
        path = [p.strip() for p in str(chunk.metadata.get("heading") or "").split(" > ")]
        own = path[-1] if path and path[-1] != title_label else ""
        heading = topic(own, "heading") if own else None
        assert chunk.embedding is not None
        rows.append((Section(doc_id, title, heading), chunk.embedding))
    return tuple(rows)


class TopicIndex:
    """Titles and headings of the indexed public documents, with their embeddings."""

    def __init__(self, store: VectorStore, embedder: Embedder, *,
                 as_of: Callable[[], datetime | None] = lambda: None,
                 min_interval_s: float = 1.0, max_busy_share: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._embedder = embedder
        self._as_of = as_of
        self._min_interval_s = min_interval_s
        self._max_busy_share = max_busy_share
        self._clock = clock
        self._docs: dict[str, _Doc] = {}
        self._dirty: set[str] = set()
        self._snapshot = _Snapshot((), np.zeros((0, 1), np.float32), ())
        self._built_as_of: datetime | None = None
        self._built = False
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duet-topics")
        self._future: Future[None] | None = None
        self._last_start = -math.inf
        self._last_took_s = 0.0

    @property
    def topics(self) -> tuple[Topic, ...]:
        """Every sayable title and heading of the last complete build."""
        return self._snapshot.topics

    @property
    def current(self) -> bool:
        """Whether the last build has seen every change noted so far."""
        with self._lock:
            return self._current_locked()

    def _current_locked(self) -> bool:
        return self._built and not self._dirty and self._as_of() == self._built_as_of

    def note_change(self, doc_id: str) -> None:
        """Mark a document as changed and make sure a background pass will read it."""
        with self._lock:
            self._dirty.add(doc_id)
        self.refresh()

    def refresh(self) -> bool:
        """Start the background pass if anything changed and none is running; never blocks."""
        with self._lock:
            if self._current_locked() or (self._future is not None
                                          and not self._future.done()):
                return False
            if self._built and not self._dirty:
                self._dirty.add("")  # nothing reported, but ``as_of`` moved: one pass
            self._future = self._executor.submit(self._drain)
        return True

    def _drain(self) -> None:
        """Rebuild, rate-limited, until every change noted meanwhile is built."""
        while True:
            interval = max(self._min_interval_s, self._last_took_s / self._max_busy_share)
            wait_s = self._last_start + interval - self._clock()
            if wait_s > 0:
                time.sleep(wait_s)
            self.rebuild()
            with self._lock:
                # Done when every reported change is read (``as_of`` alone moves on with
                # every event, which the next report covers).
                if not self._dirty:
                    return

    async def wait(self) -> None:
        """Wait for a rebuild in progress, if any."""
        future = self._future
        if future is not None:
            await asyncio.wrap_future(future)

    def rebuild(self) -> None:
        """Re-read the documents that changed and swap in a new snapshot (blocking)."""
        with self._build_lock:
            self._rebuild()

    def _rebuild(self) -> None:
        started = time.perf_counter()
        self._last_start = self._clock()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        as_of = self._as_of()
        ids: dict[Tier, list[str]] = {tier: self._store.all_ids(tier) for tier in Tier}
        current: dict[str, set[str]] = {}
        for tier_ids in ids.values():
            for cid in tier_ids:
                current.setdefault(_doc_of(cid), set()).add(cid)
        tier_of = {cid: tier for tier, tier_ids in ids.items() for cid in tier_ids}
        docs = {d: doc for d, doc in self._docs.items() if d in current}
        removed = len(docs) != len(self._docs)
        changed = [d for d, cids in current.items() if d not in docs or docs[d].chunk_ids != cids]
        # A document reported changed whose chunks are the same (an ACL change, or the
        # registry watch repeating the worker) is re-read for its metadata only.
        recheck = [d for d in dirty if d in docs and d not in changed]
        if recheck:
            for tier in Tier:
                tier_ids = [cid for d in recheck for cid in current[d] if tier_of[cid] is tier]
                metas: dict[str, list[StoredChunk]] = {}
                for chunk in self._store.get(tier, tier_ids):
                    metas.setdefault(_doc_of(chunk.chunk_id), []).append(chunk)
                for doc_id, chunks in metas.items():
                    if _signature(chunks) != docs[doc_id].signature and doc_id not in changed:
                        changed.append(doc_id)
        if changed:
            wanted = [cid for d in changed for cid in current[d]]
            found: dict[str, list[StoredChunk]] = {d: [] for d in changed}
            for tier in Tier:
                tier_ids = [cid for cid in wanted if tier_of[cid] is tier]
                for start in range(0, len(tier_ids), 512):
                    for chunk in self._store.get(tier, tier_ids[start:start + 512],
                                                 embeddings=True):
                        found[_doc_of(chunk.chunk_id)].append(chunk)
            for doc_id in changed:
                docs[doc_id] = _Doc(frozenset(current[doc_id]), _rows(doc_id, found[doc_id]),
                                    _signature(found[doc_id]))
        if self._built and not changed and not removed:
            self._built_as_of = as_of
            return
        rows = [row for doc in docs.values() for row in doc.rows]
        sections = tuple(section for section, _ in rows)
        vectors = (np.stack([vector for _, vector in rows]) if rows
                   else np.zeros((0, 1), np.float32))
        topics = {t.label: t for s in sections for t in (s.title, s.heading) if t is not None}
        self._docs = docs
        self._snapshot = _Snapshot(sections, vectors, tuple(topics.values()))
        self._built_as_of = as_of
        self._built = True
        self._last_took_s = time.perf_counter() - started
        log.debug("topic index rebuilt", extra={
            "sections": len(sections), "read_docs": len(changed),
            "took_ms": round(self._last_took_s * 1000, 1)})

    def match(self, vector: np.ndarray, *, k: int = 5) -> list[TopicMatch]:
        """The ``k`` sections most similar to a unit vector, best first."""
        snap = self._snapshot
        if not snap.sections:
            return []
        sims = snap.vectors @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-sims)[:k]
        return [TopicMatch(snap.sections[i], float(sims[i])) for i in order]

    def health(self) -> str | None:
        """None while background rebuilds succeed; else why the last one failed (``/healthz``
        shows it: answers go on from the last good snapshot)."""
        return failure_of(self._future, "topic index rebuild")

    def close(self) -> None:
        """Stop the rebuild thread (a rebuild in progress finishes on its own)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
