"""``/healthz`` watches the background work: each task is reported, one that died makes
the gateway unhealthy (real gateway, NATS, Chroma)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import Gateway

pytestmark = pytest.mark.integration


async def test_every_background_task_is_reported_and_a_dead_one_is_unhealthy(
        gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok"
        assert {"ingest-worker", "as-of-watch", "doc-watch", "keyword-index",
                "topic-index"} <= set(health["tasks"])
        assert all(t["ok"] and t["state"] == "running" for t in health["tasks"].values())

        async def broken() -> None:
            raise RuntimeError("the watcher lost its subscription")

        gateway.state.runtime.tasks.start("probe-task", broken())
        await asyncio.sleep(0.05)
        res = await client.get("/healthz")
        assert res.status_code == 503
        task = res.json()["tasks"]["probe-task"]
        assert task["state"] == "failed" and "lost its subscription" in task["error"]
        # everything else kept running
        assert res.json()["tasks"]["ingest-worker"]["ok"]
        assert (await client.post("/v1/documents", params={"wait": "true"}, json={
            "event_type": "CREATE", "doc_id": "still-works", "version": 1,
            "content": "# Still works\n\nThe worker applies documents while a sibling is down.",
            "metadata": {"acl": ["public"]}})).status_code == 200
        # the public sees the verdict, not the details
        public = await client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
        assert public.status_code == 503 and public.json() == {"status": "degraded"}


async def test_a_failed_index_rebuild_is_unhealthy(gateway: Gateway) -> None:
    from concurrent.futures import Future

    keyword = gateway.state.chat.router.retrieval.keyword
    failed: Future[None] = Future()
    failed.set_exception(MemoryError())
    keyword._future = failed  # what a rebuild thread leaves behind when it dies
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        res = await client.get("/healthz")
    assert res.status_code == 503
    assert res.json()["tasks"]["keyword-index"]["error"] == (
        "keyword index rebuild failed: MemoryError")
