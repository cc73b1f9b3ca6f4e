"""The document endpoints, health and metrics over real loopback HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Gateway

pytestmark = pytest.mark.integration

DOC = {
    "event_type": "CREATE", "doc_id": "warranty", "version": 1,
    "content": "# Warranty\n\n## Coverage\nEvery Lumora bulb and hub has a two-year warranty "
               "against defects from the date of delivery.",
    "metadata": {"title": "Warranty", "acl": ["public"], "source": "cms",
                 "url": "https://help.example/warranty"},
}


@pytest.fixture
async def client(gateway: Gateway):
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as c:
        yield c


async def test_post_with_wait_is_retrievable_then_get_reports_state(
        client: httpx.AsyncClient, gateway: Gateway) -> None:
    res = await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["outcome"] == "applied" and body["lag_ms"] >= 0 and body["event_id"]
    hits = (await gateway.state.runtime.kb.search("how long is the warranty")).hits
    assert hits[0].doc_id == "warranty" and hits[0].url == DOC["metadata"]["url"]
    doc = (await client.get("/v1/documents/warranty")).json()
    assert doc["doc_id"] == "warranty" and doc["version"] == 1 and doc["tier"] == "hot"
    assert doc["chunks"] == 1 and doc["indexed_at"]


async def test_post_without_wait_is_accepted(client: httpx.AsyncClient) -> None:
    res = await client.post("/v1/documents", json=DOC)
    assert res.status_code == 202 and res.json()["event_id"]


async def test_delete_reports_deleted_tier(client: httpx.AsyncClient) -> None:
    await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
    delete = {"event_type": "DELETE", "doc_id": "warranty", "version": 2}
    res = await client.post("/v1/documents", params={"wait": "true"}, json=delete)
    assert res.json()["outcome"] == "deleted"
    assert (await client.get("/v1/documents/warranty")).json()["tier"] == "deleted"


async def test_unknown_document_is_404(client: httpx.AsyncClient) -> None:
    res = await client.get("/v1/documents/nope")
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("body", "fragment"), [
    ({"event_type": "CREATE", "doc_id": "x", "version": 1}, "CREATE needs content"),
    ({**DOC, "event_type": "RENAME"}, "event_type"),
    ({**DOC, "doc_id": "has space"}, "doc_id"),
    ({**DOC, "version": -3}, "version"),
    ({**DOC, "unexpected": 1}, "unexpected"),
    ({**DOC, "metadata": {"source": "dlq", "acl": ["public"]}}, "reserved"),
    ({"event_type": "DELETE", "doc_id": "x", "version": 2, "content": "text"}, "DELETE carries no content"),
])
async def test_invalid_events_are_refused_and_change_nothing(
        client: httpx.AsyncClient, gateway: Gateway, body: dict, fragment: str) -> None:
    res = await client.post("/v1/documents", json=body)
    assert res.status_code == 422
    error = res.json()["error"]
    assert error["code"] == "invalid" and fragment in error["message"]
    info = await gateway.state.runtime.nc.jetstream().stream_info("DUET_DOCS")
    assert info.state.messages == 0


async def test_malformed_json_and_wrong_content_type(client: httpx.AsyncClient) -> None:
    res = await client.post("/v1/documents", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert res.status_code == 422 and "JSON" in res.json()["error"]["message"]
    res = await client.post("/v1/documents", content=b"hello", headers={"content-type": "text/plain"})
    assert res.status_code == 415 and res.json()["error"]["code"] == "unsupported_media_type"


async def test_oversized_bodies_are_refused_before_parsing(
        client: httpx.AsyncClient, gateway: Gateway) -> None:
    big = b"x" * (gateway.settings.max_body_bytes + 1)
    res = await client.post("/v1/documents", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and res.json()["error"]["code"] == "too_large"

    async def chunks():
        for _ in range(gateway.settings.max_body_bytes // 65536 + 2):
            yield b"y" * 65536

    res = await client.post("/v1/documents", content=chunks(), headers={"content-type": "application/json"})
    assert res.status_code == 413


async def test_invalid_doc_id_in_path(client: httpx.AsyncClient) -> None:
    res = await client.get("/v1/documents/bad%20id")
    assert res.status_code == 422


async def test_healthz_reports_each_dependency(client: httpx.AsyncClient) -> None:
    res = await client.get("/healthz")
    assert res.status_code == 200
    deps = res.json()["dependencies"]
    assert {"nats", "chroma", "embeddings", "ingest_worker"} <= set(deps)
    assert all(d["ok"] for d in deps.values())


async def test_metrics_exposes_ingest_series(client: httpx.AsyncClient) -> None:
    await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
    text = (await client.get("/metrics")).text
    for series in ("duet_ingest_lag_seconds_bucket", "duet_event_to_retrievable_seconds_bucket", "duet_dead_letters_total",
                   "duet_stale_versions_discarded_total", 'duet_ingest_events_total{outcome="applied"} 1.0',
                   "duet_consumer_pending", "duet_collection_chunks", "duet_as_of_age_seconds"):
        assert series in text, series
