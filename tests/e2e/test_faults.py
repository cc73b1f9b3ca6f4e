"""The fault suite: real ``duet serve`` processes whose dependencies fail under them.

- the embedded nats-server is SIGKILLed during a load of document writes;
- the NATS store's disk (a small tmpfs) fills up, then is freed;
- the Chroma server answers slowly (a delaying TCP proxy in front of ``chroma run``).

Each time: clear refusals (503 with Retry-After, never 500), a ``/healthz`` that tells the
truth within seconds, recovery without a restart of the gateway, nothing accepted lost, and
a quiet log (no tracebacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.faults import DelayProxy, child_pid, chroma_server, fill, tmpfs, wait_for
from tests.serve import ServeProcess

pytestmark = pytest.mark.e2e

#: fast probes and a restart slow enough to be seen from outside
FAST = {"DUET_HEALTH_INTERVAL_S": "0.3", "DUET_HEALTH_TIMEOUT_S": "1.5",
        "DUET_LOG_LEVEL": "INFO"}


def _doc(doc_id: str) -> dict:
    return {"event_type": "CREATE", "doc_id": doc_id, "version": 1,
            "content": f"# {doc_id}\n\nThe article {doc_id} explains how parcels ship abroad.",
            "metadata": {"acl": ["public"]}}


async def _status(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


async def _all_applied(client: httpx.AsyncClient, doc_ids: list[str]) -> None:
    """Every document is in the registry, indexed (retried until each is)."""
    pending = set(doc_ids)

    async def done() -> bool:
        for doc_id in list(pending):
            res = await client.get(f"/v1/documents/{doc_id}")
            if res.status_code == 200 and res.json()["indexed_at"]:
                pending.discard(doc_id)
        return not pending

    await wait_for(done, timeout_s=90, every_s=0.5, what=f"{len(pending)} documents applied")


def _log_of(serve: ServeProcess, data_dir: Path) -> str:
    return (data_dir.parent / f"serve-{serve.port}.log").read_text(errors="replace")


#: the worker's per-event failure (IngestWorker.handle, the ingest suite's to quiet): an
#: event in hand when NATS went away logs its stack once before it is redelivered
_WORKER_EVENT_FAILURE = ("duet.ingest: ingest failure",)


def _no_tracebacks(log: str, *, allow: tuple[str, ...] = ()) -> None:
    """A quiet log: failures are one line each, never a stack (except after a log line
    holding one of ``allow``)."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        head = next((lines[j] for j in range(i - 1, -1, -1) if lines[j][:4].isdigit()), "")
        assert any(marker in head for marker in allow), "\n".join(lines[max(0, i - 3):i + 40])


class _Load:
    """Document writes, one after another, recording each answer."""

    def __init__(self, client: httpx.AsyncClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.accepted: list[str] = []
        self.statuses: list[int] = []
        self.refusals: list[httpx.Response] = []
        self.stop = asyncio.Event()

    async def run(self, gap_s: float = 0.05) -> None:
        n = 0
        while not self.stop.is_set():
            doc_id = f"{self.prefix}-{n}"
            n += 1
            res = await self.client.post("/v1/documents", json=_doc(doc_id))
            self.statuses.append(res.status_code)
            if res.status_code == 202:
                self.accepted.append(doc_id)
            else:
                self.refusals.append(res)
            await asyncio.sleep(gap_s)


async def test_nats_sigkill_during_document_writes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve = ServeProcess(data, "", **FAST, DUET_NATS_RESTART_MIN_BACKOFF_S="2")
    try:
        await serve.ready()
        async with httpx.AsyncClient(base_url=serve.base, timeout=30) as client:
            load = _Load(client, "kill")
            writer = asyncio.create_task(load.run())
            await wait_for(lambda: _true(len(load.accepted) >= 10), what="a first load")
            nats_pid = child_pid(serve.proc.pid, "nats-server")
            assert nats_pid is not None
            os.kill(nats_pid, signal.SIGKILL)
            await wait_for(lambda: _equal(_status(client, "/healthz"), 503), timeout_s=10,
                           what="/healthz 503 after the kill")
            await wait_for(lambda: _equal(_status(client, "/healthz"), 200), timeout_s=30,
                           what="/healthz 200 after the restart")
            before = len(load.accepted)
            await wait_for(lambda: _true(len(load.accepted) >= before + 10),
                           what="writes accepted again")
            load.stop.set()
            await writer

            assert set(load.statuses) <= {202, 503}, load.statuses
            assert load.refusals, "no write was refused while NATS was down"
            for res in load.refusals:
                assert res.headers["Retry-After"]
                assert res.json()["error"]["message"] == (
                    "the document store is unavailable, retry shortly")
            assert child_pid(serve.proc.pid, "nats-server") not in (None, nats_pid)
            await _all_applied(client, load.accepted)
            answer = await client.post("/v1/chat", json={"text": "How do parcels ship?"})
            assert answer.status_code == 200 and answer.json()["type"] == "done"
            assert await _status(client, "/readyz") == 200
    finally:
        serve.stop()
    log = _log_of(serve, data)
    _no_tracebacks(log, allow=_WORKER_EVENT_FAILURE)
    assert log.count("NATS connection lost") <= 2  # once per connection, not per attempt


async def test_disk_full_then_freed(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(tmpfs(mount, 96))
        except PermissionError as exc:
            pytest.skip(str(exc))
        data = mount / "data"
        data.mkdir()
        # Chroma lives elsewhere: this fault is the NATS store's (the ingest suite fills Chroma's)
        (tmp_path / "chroma").mkdir()
        (data / "chroma").symlink_to(tmp_path / "chroma")
        serve = ServeProcess(data, "", **FAST, DUET_HEALTH_DISK_MIN_MB="2",
                             DUET_HEALTH_DISK_WARN_MB="8", DUET_NATS_RESTART_MIN_FREE_MB="4",
                             DUET_SESSION_LOG_MAX_BYTES=str(4 << 20))
        try:
            await serve.ready()
            async with httpx.AsyncClient(base_url=serve.base, timeout=30) as client:
                accepted: list[str] = []
                res = await client.post("/v1/documents", json=_doc("before-full"))
                assert res.status_code == 202
                accepted.append("before-full")
                ballast = mount / "ballast"
                await asyncio.to_thread(fill, ballast)

                async def refused() -> bool:
                    doc_id = f"full-{len(accepted)}"
                    res = await client.post("/v1/documents", json=_doc(doc_id))
                    assert res.status_code in (202, 503), res.text
                    if res.status_code == 202:
                        accepted.append(doc_id)
                    return res.status_code == 503

                await wait_for(refused, timeout_s=60, what="a refusal on a full disk")
                health = await client.get("/healthz")
                assert health.status_code == 503
                assert health.json()["dependencies"]["disk"]["status"] == "down"

                ballast.unlink()
                await wait_for(lambda: _equal(_status(client, "/healthz"), 200), timeout_s=60,
                               what="/healthz 200 after the disk is freed")

                async def publishes() -> bool:
                    res = await client.post("/v1/documents", json=_doc("after-free"))
                    return res.status_code == 202

                await wait_for(publishes, timeout_s=30, what="publishing works again")
                accepted.append("after-free")
                await _all_applied(client, accepted)
        finally:
            serve.stop()
        _no_tracebacks(_log_of(serve, data), allow=_WORKER_EVENT_FAILURE)


async def test_slow_store_is_reported_and_answers_still_come(tmp_path: Path) -> None:
    async with chroma_server(tmp_path / "chroma-server") as chroma_port, \
            DelayProxy(chroma_port) as proxy:
        data = tmp_path / "data"
        serve = ServeProcess(data, "", **FAST, DUET_HEALTH_SLOW_S="0.2",
                             DUET_CHROMA_URL=f"http://127.0.0.1:{proxy.port}")
        try:
            await serve.ready()
            async with httpx.AsyncClient(base_url=serve.base, timeout=60) as client:
                res = await client.post("/v1/documents", params={"wait": "true"},
                                        json=_doc("fast"))
                assert res.status_code == 200
                proxy.delay_s = 0.25

                async def chroma_degraded() -> bool:
                    deps = (await client.get("/healthz")).json()["dependencies"]
                    return deps["chroma"]["status"] in ("slow", "down")

                await wait_for(chroma_degraded, timeout_s=20, what="chroma reported slow")
                chroma = (await client.get("/healthz")).json()["dependencies"]["chroma"]
                assert chroma["status"] == "down" or chroma["latency_ms"] > 200
                answer = await client.post("/v1/chat", json={"text": "How do parcels ship?"})
                assert answer.status_code == 200 and answer.json()["type"] == "done"
                slow = await client.post("/v1/documents", json=_doc("slow"))
                assert slow.status_code == 202
                proxy.delay_s = 0.0
                await wait_for(lambda: _equal(_status(client, "/healthz"), 200),
                               timeout_s=30, what="/healthz 200 once the store is fast")
                await _all_applied(client, ["fast", "slow"])
        finally:
            serve.stop()
        _no_tracebacks(_log_of(serve, data))


async def _true(value: bool) -> bool:
    return value


async def _equal(value, expected) -> bool:
    return await value == expected
