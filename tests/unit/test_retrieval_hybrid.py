"""BM25 as a bounded tie-breaker, identifiers, ACL, and the background index rebuild."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from agents.retrieval.hybrid import (
    FusionWeights,
    KeywordIndex,
    fuse,
    keyword_candidates,
    rank_documents,
)
from ingest.kb import KnowledgeBase
from ingest.store import Tier

pytestmark = pytest.mark.unit

MakeKb = Callable[..., KnowledgeBase]

DOCS = {
    "hub-errors": (
        "# Hub Error Codes\n\n## Radio errors\nError E417 means the radio firmware of the hub "
        "failed its checksum. Reinstall the firmware from the app under Settings > Hub > "
        "Firmware.\n\n## Network errors\nError E101 means the hub cannot reach the internet. "
        "Check your router and its cables.\n"),
    "troubleshooting": (
        "# Troubleshooting the Hub\n\n## When something goes wrong\nIf the hub shows an error, "
        "restart it by unplugging it for ten seconds. Most errors clear after a restart.\n\n"
        "## Getting help\nContact support if an error keeps coming back after a restart.\n"),
    "pairing": (
        "# Pairing Bulbs\n\n## How to pair\nScrew in the bulb, switch it on and tap Add device "
        "in the app. The bulb blinks once when it is found.\n"),
}
STAFF_DOC = {
    "internal-codes": (
        "# Internal Service Codes\n\n## Service code S9\nService code S9 unlocks the factory "
        "test menu of the hub. Never share it with customers.\n"),
}


@pytest.fixture
def kb(make_kb: MakeKb) -> KnowledgeBase:
    make_kb(STAFF_DOC, acl=["staff"])
    return make_kb(DOCS)


@pytest.fixture
def index(kb: KnowledgeBase):
    index = KeywordIndex(kb)
    index.rebuild()
    yield index
    index.close()


def test_identifiers_are_recognised_only_when_in_the_corpus(index: KeywordIndex) -> None:
    assert index.query("what does error E417 mean?").identifier
    assert not index.query("what does error E999 mean?").identifier
    assert not index.query("my hub shows an error").identifier


def test_title_terms_name_things_not_actions(index: KeywordIndex) -> None:
    terms = index.title_terms
    assert {"hub", "error", "bulb"} <= terms
    assert "troubleshoot" not in terms and "pair" not in terms


def test_keyword_signal_breaks_near_ties_only(kb: KnowledgeBase, index: KeywordIndex) -> None:
    hits = {h.doc_id: h for h in kb.search_text("hub error E417", k=8).hits}
    match, other = hits["hub-errors"], hits["pairing"]
    keyword = index.query("hub error E417")
    near = [dataclasses.replace(match, score=0.49), dataclasses.replace(other, score=0.50)]
    assert fuse(near, keyword)[0].hit.doc_id == "hub-errors"
    far = [dataclasses.replace(match, score=0.20), dataclasses.replace(other, score=0.60)]
    assert fuse(far, keyword)[0].hit.doc_id == "pairing"
    assert fuse(near, None)[0].hit.doc_id == "pairing"  # no index yet: dense order


def test_documents_score_as_their_best_chunk(kb: KnowledgeBase, index: KeywordIndex) -> None:
    scored = fuse(kb.search_text("the hub cannot reach the internet", k=8).hits,
                  index.query("the hub cannot reach the internet"))
    ranked = rank_documents(scored)
    assert ranked[0].doc_id == "hub-errors"
    assert ranked[0].fused == max(s.fused for s in scored if s.hit.doc_id == "hub-errors")
    assert ranked[0].best.heading.endswith("Network errors")
    assert len({d.doc_id for d in ranked}) == len(ranked)


def test_identifier_queries_add_keyword_candidates(kb: KnowledgeBase,
                                                   index: KeywordIndex) -> None:
    query = "E417"
    vector = kb.embedder.embed_one(query)
    keyword = index.query(query)
    others = [h.chunk_id for h in kb.search_text("restart", k=8).hits
              if h.doc_id != "hub-errors"]
    extra = keyword_candidates(kb, keyword, vector, exclude=others, groups=(), n=2)
    assert extra and extra[0].doc_id == "hub-errors" and "E417" in extra[0].text
    assert extra[0].relevance > 0 and 0 < extra[0].score <= extra[0].relevance


def test_keyword_candidates_respect_the_acl(kb: KnowledgeBase, index: KeywordIndex) -> None:
    query = "service code S9"
    keyword = index.query(query)
    assert keyword.identifier
    vector = kb.embedder.embed_one(query)
    public = keyword_candidates(kb, keyword, vector, exclude=(), groups=(), n=4)
    assert all(h.doc_id != "internal-codes" for h in public)
    staff = keyword_candidates(kb, keyword, vector, exclude=(), groups=("staff",), n=4)
    assert any(h.doc_id == "internal-codes" for h in staff)


def test_identifier_weight_is_stronger(kb: KnowledgeBase, index: KeywordIndex) -> None:
    hits = kb.search_text("E417", k=8).hits
    plain = fuse(hits, dataclasses.replace(index.query("E417"), identifier=False))
    boosted = fuse(hits, index.query("E417"), FusionWeights(identifier=0.3))
    gain = {s.hit.chunk_id: s.fused - s.hit.score for s in plain}
    assert all(s.fused - s.hit.score >= gain[s.hit.chunk_id] for s in boosted)


async def test_rebuilds_in_the_background_when_the_kb_moves(make_kb: MakeKb) -> None:
    base = make_kb(DOCS)
    stamp = [datetime(2026, 1, 1, tzinfo=UTC)]
    kb = KnowledgeBase(base.store, base.embedder, base.profiles, as_of=lambda: stamp[0])
    index = KeywordIndex(kb, min_interval_s=0, max_busy_share=None)
    try:
        assert index.query("E417") is None  # nothing built yet
        assert index.refresh()
        await index.wait()
        assert index.ready and index.query("E417").top_score > 0
        assert not index.refresh()  # as_of unchanged: nothing to do
        make_kb({"lamps": "# Desk Lamps\n\n## Model X7\nThe X7 desk lamp dims in ten steps.\n"})
        assert index.query("X7").top_score == 0
        stamp[0] += timedelta(seconds=1)
        assert index.refresh()
        await index.wait()
        assert index.query("X7").top_score > 0
    finally:
        index.close()


async def test_rebuilds_are_rate_limited(make_kb: MakeKb) -> None:
    base = make_kb(DOCS)
    stamp = [datetime(2026, 1, 1, tzinfo=UTC)]
    kb = KnowledgeBase(base.store, base.embedder, base.profiles, as_of=lambda: stamp[0])
    index = KeywordIndex(kb, min_interval_s=3600)
    try:
        assert index.refresh()
        await index.wait()
        stamp[0] += timedelta(seconds=1)
        assert not index.refresh()
    finally:
        index.close()


async def test_rebuild_drops_deleted_chunks_and_reads_only_new_ones(make_kb: MakeKb) -> None:
    base = make_kb(DOCS)
    stamp = [datetime(2026, 1, 1, tzinfo=UTC)]
    kb = KnowledgeBase(base.store, base.embedder, base.profiles, as_of=lambda: stamp[0])
    index = KeywordIndex(kb, min_interval_s=0, max_busy_share=None)
    try:
        index.rebuild()
        assert index.query("E417").top_score > 0
        gone = [cid for cid in base.store.all_ids(Tier.hot) if "E417" in
                base.store.get(Tier.hot, [cid])[0].text]
        base.store.delete(Tier.hot, gone)
        reads: list[int] = []
        real_get = base.store.get
        base.store.get = lambda tier, ids, **kw: reads.append(len(ids)) or real_get(tier, ids, **kw)
        index.rebuild()
        assert sum(reads) == 0  # nothing new to read
        assert index.query("E417").top_score == 0
    finally:
        index.close()
