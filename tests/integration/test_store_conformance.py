"""One conformance suite for every :class:`VectorStore`: embedded Chroma and a Chroma server.

The server is the real ``chroma run`` of the installed chromadb package, on a free port.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.natsd import free_port
from ingest.kb import chunk_metadata
from ingest.store import HNSW, ChromaStore, StoredChunk, Tier

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    binary = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen([str(binary), "run", "--path", str(path), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("chroma server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(params=["embedded", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ChromaStore:
    prefix = f"c{abs(hash(tmp_path)) % 10**8}"
    if request.param == "embedded":
        return ChromaStore(path=tmp_path / "chroma", prefix=prefix)
    return ChromaStore(url=request.getfixturevalue("chroma_server"), prefix=prefix)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


def chunk(doc: str, i: int, *, acl: tuple[str, ...] = ("public",), age_days: float = 0) -> StoredChunk:
    stamp = datetime.fromtimestamp(time.time() - age_days * 86400, UTC)
    return StoredChunk(f"{doc}:{i}", f"text {doc} {i}", chunk_metadata(
        doc_id=doc, version=1, title=doc, url=None, heading=doc, source="cms", acl=list(acl),
        reviewed=True, updated_at=stamp, position=i), unit(hash((doc, i)) % 2**32))


def test_upsert_is_idempotent_and_get_returns_vectors(store: ChromaStore) -> None:
    chunks = [chunk("a", 0), chunk("a", 1)]
    store.upsert(Tier.hot, chunks)
    store.upsert(Tier.hot, chunks)
    assert store.count(Tier.hot) == 2 and store.count(Tier.cold) == 0
    got = {c.chunk_id: c for c in store.get(Tier.hot, ["a:0", "a:1", "missing"], embeddings=True)}
    assert set(got) == {"a:0", "a:1"}
    assert np.allclose(got["a:0"].embedding, chunks[0].embedding, atol=1e-6)
    assert got["a:1"].metadata["doc_id"] == "a" and got["a:1"].text == "text a 1"


def test_query_ranks_by_cosine_similarity(store: ChromaStore) -> None:
    chunks = [chunk("d", i) for i in range(20)]
    store.upsert(Tier.cold, chunks)
    hits = store.query(Tier.cold, chunks[7].embedding, 3)
    assert hits[0].chunk_id == "d:7" and hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert hits[0].tier is Tier.cold and hits[0].similarity >= hits[1].similarity


def test_query_where_filters_on_acl(store: ChromaStore) -> None:
    store.upsert(Tier.hot, [chunk("pub", 0), chunk("staff", 0, acl=("staff",))])
    where = {"acl": {"$contains": "staff"}}
    assert [h.chunk_id for h in store.query(Tier.hot, unit(1), 5, where=where)] == ["staff:0"]


def test_update_metadata_keeps_the_vector(store: ChromaStore) -> None:
    original = chunk("m", 0)
    store.upsert(Tier.hot, [original])
    meta = dict(original.metadata, version=2)
    store.update_metadata(Tier.hot, ["m:0"], [meta])
    (got,) = store.get(Tier.hot, ["m:0"], embeddings=True)
    assert got.metadata["version"] == 2
    assert np.allclose(got.embedding, original.embedding, atol=1e-6)


def test_delete_ignores_unknown_ids(store: ChromaStore) -> None:
    store.upsert(Tier.hot, [chunk("x", 0), chunk("x", 1)])
    store.delete(Tier.hot, ["x:0", "nope"])
    assert store.all_ids(Tier.hot) == ["x:1"]


def test_by_documents_and_docs_changed_before(store: ChromaStore) -> None:
    store.upsert(Tier.hot, [chunk("old", 0, age_days=10), chunk("old", 1, age_days=10),
                            chunk("new", 0)])
    assert {c.chunk_id for c in store.by_documents(Tier.hot, ["old"])} == {"old:0", "old:1"}
    assert store.docs_changed_before(Tier.hot, time.time() - 7 * 86400) == {"old"}


def test_collections_have_no_default_embedding_function(store: ChromaStore) -> None:
    collection = store._collections[Tier.hot]
    with pytest.raises(Exception, match="(?i)embedding"):
        collection.add(ids=["raw"], documents=["no vector given"])
    assert store.count(Tier.hot) == 0


def test_hot_and_cold_have_their_own_hnsw_settings(store: ChromaStore) -> None:
    hot = store._collections[Tier.hot].configuration["hnsw"]
    cold = store._collections[Tier.cold].configuration["hnsw"]
    assert hot["ef_construction"] == HNSW[Tier.hot]["ef_construction"]
    assert cold["max_neighbors"] == HNSW[Tier.cold]["max_neighbors"]
    assert hot["max_neighbors"] < cold["max_neighbors"]
