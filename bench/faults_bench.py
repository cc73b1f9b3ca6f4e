"""Time to recover from each fault of a real ``duet serve`` (``python -m bench.run faults``).

- **nats_sigkill**: the embedded nats-server is SIGKILLed ``ROUNDS`` times under a steady
  trickle of document writes; per round: kill → ``/healthz`` 503 (detection), kill → the
  first accepted write (document API back), kill → ``/healthz`` 200, and the writes refused
  meanwhile. Then every accepted document must be applied (lost = 0).
- **quiet_outage**: NATS held down for 10 s with no traffic: log bytes per second (the
  issue measured 2.6 KB/s of tracebacks).
- **disk_full** (needs root for a tmpfs): the NATS store's disk is filled, then freed;
  fill → ``/healthz`` 503, free → publish accepted again, free → ``/healthz`` 200.

Default restart backoff and probe interval (``DUET_HEALTH_INTERVAL_S`` 2 s): the figures are
what an operator gets. Run it on an idle machine; the numbers are seconds, not milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import save, summary
from tests.faults import child_pid, fill, tmpfs, wait_for
from tests.serve import ServeProcess

__all__ = ["main"]

ROUNDS = int(os.environ.get("DUET_BENCH_FAULT_ROUNDS", "3"))


def _doc(doc_id: str) -> dict[str, Any]:
    return {"event_type": "CREATE", "doc_id": doc_id, "version": 1,
            "content": f"# {doc_id}\n\nHow parcel {doc_id} ships abroad, and what it costs.",
            "metadata": {"acl": ["public"]}}


class _Trickle:
    """One document write every ``gap_s``; the time of each answer, by status."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.accepted: list[tuple[float, str]] = []
        self.refused: list[float] = []
        self.other: list[int] = []
        self.stop = asyncio.Event()

    async def run(self, gap_s: float = 0.05) -> None:
        n = 0
        while not self.stop.is_set():
            doc_id = f"trickle-{n}"
            n += 1
            try:
                res = await self.client.post("/v1/documents", json=_doc(doc_id))
            except httpx.HTTPError:
                self.other.append(0)
                continue
            now = time.monotonic()
            if res.status_code == 202:
                self.accepted.append((now, doc_id))
            elif res.status_code == 503:
                self.refused.append(now)
            else:
                self.other.append(res.status_code)
            await asyncio.sleep(gap_s)


async def _health_is(client: httpx.AsyncClient, status: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return (await client.get("/healthz")).status_code == status
    return False


async def _sample_health(client: httpx.AsyncClient, out: list[tuple[float, int]]) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError):
            out.append((time.monotonic(), (await client.get("/healthz")).status_code))
        await asyncio.sleep(0.05)


async def _lost(client: httpx.AsyncClient, doc_ids: list[str], timeout_s: float = 120) -> int:
    pending = set(doc_ids)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for doc_id in list(pending):
            res = await client.get(f"/v1/documents/{doc_id}")
            if res.status_code == 200 and res.json()["indexed_at"]:
                pending.discard(doc_id)
        if pending:
            await asyncio.sleep(0.5)
    return len(pending)


async def nats_sigkill(root: Path) -> dict[str, Any]:
    serve = ServeProcess(root / "data", "")
    try:
        await serve.ready()
        async with httpx.AsyncClient(base_url=serve.base, timeout=30) as client:
            load = _Trickle(client)
            writer = asyncio.create_task(load.run())
            detect_ms: list[float] = []
            api_back_ms: list[float] = []
            healthy_ms: list[float] = []
            refused: list[int] = []
            for _ in range(ROUNDS):
                await asyncio.sleep(3.0)
                pid = child_pid(serve.proc.pid, "nats-server")
                assert pid is not None, "no nats-server child"
                before_refused = len(load.refused)
                samples: list[tuple[float, int]] = []
                sampler = asyncio.create_task(_sample_health(client, samples))
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)

                async def accepted_again(at: float = killed) -> bool:
                    return bool(load.accepted) and load.accepted[-1][0] > at

                await wait_for(accepted_again, timeout_s=60, every_s=0.02,
                               what="a write accepted after the kill")
                first = next(t for t, _ in load.accepted if t > killed)
                api_back_ms.append(1000 * (first - killed))
                # /healthz: first 503 after the kill, then the first 200 after that (a
                # restart quicker than one probe round is never seen as 503 at all)
                await asyncio.sleep(5.0)
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                down = next((t for t, status in samples if status == 503), None)
                if down is not None:
                    detect_ms.append(1000 * (down - killed))
                    up = next((t for t, status in samples if t > down and status == 200), None)
                    if up is not None:
                        healthy_ms.append(1000 * (up - killed))
                refused.append(len(load.refused) - before_refused)
            load.stop.set()
            await writer
            lost = await _lost(client, [doc_id for _, doc_id in load.accepted])
        return {"rounds": ROUNDS, "kill_to_healthz_503_ms": summary(detect_ms) if detect_ms
                else None, "kill_to_document_api_back_ms": summary(api_back_ms),
                "kill_to_healthz_200_ms": summary(healthy_ms) if healthy_ms else None,
                "rounds_seen_unhealthy": len(detect_ms),
                "writes_refused_per_round": refused, "accepted": len(load.accepted),
                "lost": lost, "other_statuses": sorted(set(load.other))}
    finally:
        serve.stop()


async def quiet_outage(root: Path, down_s: float = 10.0) -> dict[str, Any]:
    """Log bytes per second while NATS stays down (its restart held back), no traffic."""
    data = root / "data"
    serve = ServeProcess(data, "", DUET_LOG_LEVEL="INFO",
                         DUET_NATS_RESTART_MIN_BACKOFF_S=str(down_s + 5))
    log = data.parent / f"serve-{serve.port}.log"
    try:
        await serve.ready()
        await asyncio.sleep(2.0)
        pid = child_pid(serve.proc.pid, "nats-server")
        assert pid is not None, "no nats-server child"
        before = log.stat().st_size
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(down_s)
        grown = log.stat().st_size - before
        return {"down_s": down_s, "log_bytes": grown,
                "log_bytes_per_s": round(grown / down_s, 1),
                "tracebacks": log.read_text(errors="replace").count("Traceback")}
    finally:
        serve.stop()


async def disk_full(root: Path) -> dict[str, Any]:
    mount = root / "small"
    with tmpfs(mount, 96):
        data = mount / "data"
        data.mkdir()
        (root / "chroma").mkdir()
        (data / "chroma").symlink_to(root / "chroma")
        serve = ServeProcess(data, "", DUET_HEALTH_DISK_MIN_MB="2",
                             DUET_HEALTH_DISK_WARN_MB="8", DUET_NATS_RESTART_MIN_FREE_MB="4",
                             DUET_SESSION_LOG_MAX_BYTES=str(4 << 20))
        try:
            await serve.ready()
            async with httpx.AsyncClient(base_url=serve.base, timeout=30) as client:
                ballast = mount / "ballast"
                filled = time.monotonic()
                await asyncio.to_thread(fill, ballast)
                fill_s = time.monotonic() - filled
                detect_ms = 1000 * await wait_for(lambda: _health_is(client, 503),
                                                  timeout_s=30, every_s=0.05)
                n = 0

                async def refused() -> bool:
                    nonlocal n
                    n += 1
                    res = await client.post("/v1/documents", json=_doc(f"full-{n}"))
                    return res.status_code == 503

                await wait_for(refused, timeout_s=60, what="a refusal on the full disk")
                freed = time.monotonic()
                ballast.unlink()

                async def publishes() -> bool:
                    nonlocal n
                    n += 1
                    res = await client.post("/v1/documents", json=_doc(f"free-{n}"))
                    return res.status_code == 202

                publish_ms = 1000 * await wait_for(publishes, timeout_s=60, every_s=0.05)
                await wait_for(lambda: _health_is(client, 200), timeout_s=60, every_s=0.05)
                healthy_ms = 1000 * (time.monotonic() - freed)
            return {"fill_s": round(fill_s, 2),
                    "fill_to_healthz_503_ms": round(detect_ms, 1),
                    "free_to_publish_accepted_ms": round(publish_ms, 1),
                    "free_to_healthz_200_ms": round(healthy_ms, 1)}
        finally:
            serve.stop()


async def main() -> None:
    """Both faults; the disk one is skipped (and said so) without root."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="duet-faults-") as tmp:
        results["nats_sigkill"] = await nats_sigkill(Path(tmp) / "kill")
        results["quiet_outage"] = await quiet_outage(Path(tmp) / "quiet")
        try:
            results["disk_full"] = await disk_full(Path(tmp) / "disk")
        except PermissionError as exc:
            results["disk_full"] = {"skipped": str(exc)}
    save("faults", results)
