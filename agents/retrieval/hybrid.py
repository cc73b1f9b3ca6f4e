"""Hybrid ranking: dense retrieval first, a BM25 keyword signal as a bounded tie-breaker.

Rank fusion of BM25 with the dense ranking is not free: on StackFAQ reciprocal-rank
fusion (k=60) lowered MRR@10 from 0.974 to 0.886 (MEASURED.md), because BM25's own
ranking gets an equal vote. Here BM25 only *adjusts* dense candidates::

    fused = dense score + w · bm25 / max bm25 over the corpus      (w = 0.15)

so a keyword match can reorder documents whose dense scores are within ``w`` of each
other and never lifts an unrelated chunk far. When the query carries an exact
identifier that occurs in the corpus (a SKU like ``BR30``, an order number, an error
code, an acronym), ``w`` rises to 0.3 and the best BM25 chunks join the candidates even
if dense search missed them. On the bundled sample KB (218 queries from
``configs/intents.yaml``, document level, 16 dense candidates) this gives MRR 0.904 /
R@1 0.835 against 0.893 / 0.821 for dense alone, 0.893 / 0.826 for RRF and 0.835 / 0.748
for BM25 alone; any ``w`` from 0.1 to 0.3 lands within 0.005 of that, 0.4 starts to hurt.

The BM25 index (``bm25s``) covers every chunk of both tiers and is rebuilt in a
background thread when the knowledge base's ``as_of`` moves (at most every
``min_interval_s``); a turn only ever reads the last complete snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import bm25s
import numpy as np

from agents.text import STOPWORDS, keyword_tokens, stem
from core.tasks import failure_of
from ingest.kb import UNREVIEWED_WEIGHT, Hit, KnowledgeBase, hit_from_metadata
from ingest.store import Tier

__all__ = [
    "DocScore",
    "FusionWeights",
    "KeywordIndex",
    "KeywordScores",
    "ScoredHit",
    "fuse",
    "keyword_candidates",
    "rank_documents",
    "rescore",
    "title_terms",
]

log = logging.getLogger("duet.agents")

_IDENTIFIER = re.compile(
    r"\b(?=[A-Za-z-]*\d)(?=[\d-]*[A-Za-z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\b"  # BR30, AB-4821937
    r"|\b\d{4,}\b"                                                          # 4821937
    r"|\b[A-Z]{2,}\b")                                                      # GDPR, SMS
#: Title words that name an action or a kind of article, not a thing.
_GENERIC_TITLE_WORDS = frozenset({
    "reset", "setup", "set", "update", "updates", "installation", "install", "policy",
    "policies", "option", "options", "method", "methods", "current", "time", "times", "change",
    "changes", "guide", "faq", "overview", "general", "information", "contact", "how",
    "introduction", "started", "use", "tips", "basics", "help", "support", "questions",
})
_TITLE_WORD = re.compile(r"[a-z0-9]+")
_BATCH = 512
#: Keyword-only candidates one document may add (issue #11: no crowding by repetition).
_KEYWORD_PER_DOC = 2


@dataclass(frozen=True)
class _Corpus:
    """One complete, immutable BM25 snapshot of the knowledge base."""

    bm25: bm25s.BM25 | None
    chunk_ids: list[str]
    tiers: list[Tier]
    acl: list[frozenset[str]]
    position: dict[str, int]
    vocabulary: frozenset[str]
    title_terms: frozenset[str]
    as_of: datetime | None
    #: document id → the stems of all its chunks
    doc_terms: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class KeywordScores:
    """BM25 scores of one query over the whole corpus."""

    corpus: _Corpus
    scores: np.ndarray
    top_score: float
    #: The query names an identifier that occurs in the corpus.
    identifier: bool

    def normalised(self, chunk_id: str) -> float:
        """The chunk's BM25 score over the best score in the corpus, in [0, 1]."""
        i = self.corpus.position.get(chunk_id)
        if i is None or self.top_score <= 0:
            return 0.0
        return float(self.scores[i]) / self.top_score

    def top(self, n: int, groups: Iterable[str], *,
            per_doc: int = _KEYWORD_PER_DOC) -> list[tuple[str, Tier]]:
        """The ``n`` best keyword matches the groups may see: (chunk id, tier), at most
        ``per_doc`` of one document (a document of many repetitive chunks takes no more)."""
        allowed = frozenset(groups) | {"public"}
        out: list[tuple[str, Tier]] = []
        taken: dict[str, int] = {}
        for i in np.argsort(-self.scores):  # stops at n, or at the first zero score
            if self.scores[i] <= 0 or len(out) >= n:
                break
            cid = self.corpus.chunk_ids[i]
            doc = cid.rsplit(":", 1)[0]
            if self.corpus.acl[i] & allowed and taken.get(doc, 0) < per_doc:
                taken[doc] = taken.get(doc, 0) + 1
                out.append((cid, self.corpus.tiers[i]))
        return out


@dataclass(frozen=True)
class ScoredHit:
    """A chunk with its normalised keyword score and fused ranking score."""

    hit: Hit
    keyword: float
    fused: float


@dataclass(frozen=True)
class DocScore:
    """A document's ranking: the max over its chunks (fused for order, relevance for confidence)."""

    doc_id: str
    title: str
    #: Best fused score (ranking).
    fused: float
    #: Best dense score: relevance × freshness × review weight.
    dense: float
    #: Best cosine relevance, freshness aside (confidence).
    relevance: float
    hits: tuple[ScoredHit, ...]

    @property
    def best(self) -> Hit:
        """Its best chunk."""
        return self.hits[0].hit


@dataclass(frozen=True)
class FusionWeights:
    """How much BM25 may move the dense ranking."""

    #: Weight of the normalised BM25 score for ordinary queries (a tie-breaker).
    keyword: float = 0.15
    #: Weight when the query names an identifier found in the corpus.
    identifier: float = 0.3
    #: BM25-only chunks added to the candidates for identifier queries.
    extra_candidates: int = 4


class KeywordIndex:
    """BM25 over every chunk of the knowledge base, swapped in whole after each rebuild."""

    def __init__(self, kb: KnowledgeBase, *, min_interval_s: float = 5.0,
                 max_busy_share: float | None = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kb = kb
        self._min_interval_s = min_interval_s
        self._max_busy_share = max_busy_share
        self._clock = clock
        self._corpus: _Corpus | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duet-bm25")
        self._future: Future[None] | None = None
        self._last_start = -math.inf
        self._last_took_s = 0.0
        self._lock = threading.Lock()
        #: chunk id → (tier, acl, tokens, title): chunk text never changes under one id
        #: (ids are content-addressed), so a rebuild reads only the chunks it has not seen.
        self._seen: dict[str, tuple[Tier, frozenset[str], list[str], str]] = {}

    @property
    def ready(self) -> bool:
        """Whether a snapshot exists."""
        return self._corpus is not None

    def knows(self, stem_: str) -> bool:
        """Whether any chunk of the knowledge base has this stem (True before the first build)."""
        corpus = self._corpus
        return corpus is None or stem_ in corpus.vocabulary

    def document_share(self, stem_: str) -> float:
        """The share of documents that contain this stem (0 before the first build)."""
        corpus = self._corpus
        if corpus is None or not corpus.doc_terms:
            return 0.0
        return sum(stem_ in t for t in corpus.doc_terms.values()) / len(corpus.doc_terms)

    def document_has(self, doc_id: str, stem_: str) -> bool:
        """Whether the document contains this stem (True when the document is unknown)."""
        corpus = self._corpus
        terms = corpus.doc_terms.get(doc_id) if corpus is not None else None
        return terms is None or stem_ in terms

    @property
    def title_terms(self) -> frozenset[str]:
        """Stemmed words of document titles that name things (the KB's "product nouns")."""
        corpus = self._corpus
        return corpus.title_terms if corpus is not None else frozenset()

    def refresh(self) -> bool:
        """Start a background rebuild if the knowledge base moved on; never blocks."""
        corpus = self._corpus
        if corpus is not None and corpus.as_of == self._kb.as_of:
            return False
        with self._lock:
            if self._future is not None and not self._future.done():
                return False
            # Rebuilding costs time proportional to the corpus: under a steady stream of
            # changes, spend at most ``max_busy_share`` of one core on it.
            interval = self._min_interval_s
            if self._max_busy_share:
                interval = max(interval, self._last_took_s / self._max_busy_share)
            if self._clock() - self._last_start < interval:
                return False
            self._last_start = self._clock()
            self._future = self._executor.submit(self.rebuild)
        return True

    async def wait(self) -> None:
        """Wait for a rebuild in progress, if any."""
        future = self._future
        if future is not None:
            await asyncio.wrap_future(future)

    def rebuild(self) -> None:
        """Read every chunk and build a new snapshot (blocking; seconds at 50k chunks)."""
        started = time.perf_counter()
        as_of = self._kb.as_of
        store = self._kb.store
        seen: dict[str, tuple[Tier, frozenset[str], list[str], str]] = {}
        for tier in Tier:
            all_ids = [cid for cid in store.all_ids(tier) if cid not in seen]
            unknown = [cid for cid in all_ids if self._seen.get(cid, (None,))[0] is not tier]
            for cid in all_ids:
                if cid not in unknown:
                    seen[cid] = self._seen[cid]
            for start in range(0, len(unknown), _BATCH):
                for chunk in store.get(tier, unknown[start:start + _BATCH]):
                    meta = chunk.metadata
                    seen[chunk.chunk_id] = (
                        tier, frozenset(meta.get("acl") or ("public",)),
                        keyword_tokens(f"{meta.get('heading', '')}\n{chunk.text}"),
                        str(meta.get("title") or ""))
        self._seen = seen
        ids = list(seen)
        tiers = [seen[cid][0] for cid in ids]
        acl = [seen[cid][1] for cid in ids]
        tokens = [seen[cid][2] for cid in ids]
        titles = {seen[cid][3] for cid in ids}
        by_doc: dict[str, set[str]] = {}
        for cid, toks in zip(ids, tokens, strict=True):
            by_doc.setdefault(cid.rsplit(":", 1)[0], set()).update(toks)
        bm25 = None
        if ids:
            bm25 = bm25s.BM25()
            bm25.index(tokens, show_progress=False)
        self._corpus = _Corpus(
            bm25=bm25, chunk_ids=ids, tiers=tiers, acl=acl,
            position={cid: i for i, cid in enumerate(ids)},
            vocabulary=frozenset(w for ts in tokens for w in ts),
            title_terms=title_terms(titles), as_of=as_of,
            doc_terms={d: frozenset(t) for d, t in by_doc.items()},
        )
        self._last_took_s = time.perf_counter() - started
        log.info("keyword index rebuilt", extra={
            "chunks": len(ids), "took_ms": round((time.perf_counter() - started) * 1000, 1)})

    def query(self, text: str) -> KeywordScores | None:
        """BM25 scores of ``text`` over the last snapshot (None before the first build)."""
        corpus = self._corpus
        if corpus is None or corpus.bm25 is None:
            return None
        terms = [t for t in keyword_tokens(text) if t in corpus.vocabulary]
        if not terms:
            return KeywordScores(corpus, np.zeros(len(corpus.chunk_ids), np.float32), 0.0, False)
        scores = np.asarray(corpus.bm25.get_scores(terms), dtype=np.float32)
        identifier = any(
            t in corpus.vocabulary for m in _IDENTIFIER.findall(text) for t in keyword_tokens(m))
        return KeywordScores(corpus, scores, float(scores.max(initial=0.0)), identifier)

    def health(self) -> str | None:
        """None while background rebuilds succeed; else why the last one failed (``/healthz``
        shows it: answers go on from the last good snapshot)."""
        return failure_of(self._future, "keyword index rebuild")

    def close(self) -> None:
        """Stop the rebuild thread (a rebuild in progress finishes on its own)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def title_terms(titles: Iterable[str]) -> frozenset[str]:
    """Stems of the title words that name things: no stopwords, gerunds or generic words."""
    return frozenset(
        stem(w) for title in titles for w in _TITLE_WORD.findall(title.lower())
        if w not in STOPWORDS and w not in _GENERIC_TITLE_WORDS and not w.endswith("ing")
        and not w.isdigit())


def rescore(kb: KnowledgeBase, hit: Hit, relevance: float, *, now: float | None = None) -> Hit:
    """The hit scored as the knowledge base scores: relevance × freshness × review weight."""
    now = time.time() if now is None else now
    age_days = (now - hit.updated_at.timestamp()) / 86400
    freshness = kb.profiles.for_source(hit.source).weight(age_days)
    review = 1.0 if hit.reviewed else UNREVIEWED_WEIGHT
    relevance = max(relevance, 0.0)
    return dataclasses.replace(hit, relevance=relevance, freshness=freshness,
                               score=relevance * freshness * review)


def keyword_candidates(kb: KnowledgeBase, keyword: KeywordScores, vector: np.ndarray, *,
                       exclude: Iterable[str], groups: Iterable[str], n: int) -> list[Hit]:
    """The best BM25 chunks dense search missed, scored densely (blocking: one store read)."""
    skip = set(exclude)
    wanted = [(cid, tier) for cid, tier in keyword.top(n + len(skip), groups) if cid not in skip]
    wanted = wanted[:n]
    allowed = frozenset(groups) | {"public"}
    out: list[Hit] = []
    for tier in Tier:
        ids = [cid for cid, t in wanted if t == tier]
        for chunk in kb.store.get(tier, ids, embeddings=True):
            # The snapshot may predate an ACL change: check the stored metadata again.
            if chunk.embedding is None or not allowed & set(chunk.metadata.get("acl") or ()):
                continue
            base = hit_from_metadata(chunk.chunk_id, chunk.text, chunk.metadata, tier,
                                     relevance=0.0, freshness=1.0, score=0.0)
            out.append(rescore(kb, base, float(np.dot(chunk.embedding, vector))))
    return out


def fuse(hits: Sequence[Hit], keyword: KeywordScores | None,
         weights: FusionWeights = FusionWeights()) -> list[ScoredHit]:
    """Dense hits with the keyword tie-breaker added, best first."""
    if keyword is None:
        scored = [ScoredHit(h, 0.0, h.score) for h in hits]
    else:
        w = weights.identifier if keyword.identifier else weights.keyword
        scored = []
        for h in hits:
            kw = keyword.normalised(h.chunk_id)
            scored.append(ScoredHit(h, kw, h.score + w * kw))
    return sorted(scored, key=lambda s: s.fused, reverse=True)


def rank_documents(scored: Sequence[ScoredHit]) -> list[DocScore]:
    """Chunks grouped by document; a document scores as its best chunk."""
    groups: dict[str, list[ScoredHit]] = {}
    for s in scored:
        groups.setdefault(s.hit.doc_id, []).append(s)
    docs = [
        DocScore(doc_id=doc_id, title=items[0].hit.title,
                 fused=max(i.fused for i in items), dense=max(i.hit.score for i in items),
                 relevance=max(i.hit.relevance for i in items),
                 hits=tuple(sorted(items, key=lambda i: i.fused, reverse=True)))
        for doc_id, items in groups.items()
    ]
    return sorted(docs, key=lambda d: d.fused, reverse=True)
