"""The vector store's faults are never the events' (issue #11): a read-only Chroma
directory and a full disk hold events back, nothing is dead-lettered or lost, and all of
them apply once the fault clears. Real mounts: these need root (CI runs as root)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from core.metrics import Metrics
from core.natsd import EmbeddedNats
from core.settings import Settings
from ingest.events import DocumentEvent
from ingest.publisher import publish_event
from ingest.registry import DocState
from ingest.runtime import KnowledgeRuntime
from ingest.store import Tier
from tests.conftest import make_settings, run_gateway

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root"),
]

EVENTS = 6


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to undo at the end, whatever happens (lazily: Chroma holds files)."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        unmount(point)


def doc(i: int) -> DocumentEvent:
    return DocumentEvent.model_validate({
        "event_type": "CREATE", "doc_id": f"doc-{i}", "version": 1,
        "content": f"# Article {i}\n\nArticle number {i} explains topic {i} in some detail.",
        "metadata": {"title": f"Article {i}", "acl": ["public"], "source": "cms"},
    })


async def wait_for(check: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def applied(rt: KnowledgeRuntime) -> int:
    count = 0
    for i in range(EVENTS):
        record, _ = await rt.registry.get(f"doc-{i}")
        count += record is not None and record.state is DocState.hot
    return count


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    """Quick probes and backoff; ``max_deliver`` low, so a miscount would dead-letter."""
    return make_settings(tmp_path, nats_server.url, store_probe_interval_s=0.2,
                         store_fault_max_backoff_s=1.0, max_deliver=2)


@pytest.fixture
async def start(settings: Settings, nats_server: EmbeddedNats, embedder
                ) -> AsyncIterator[Callable[[], Awaitable[KnowledgeRuntime]]]:
    """Start the runtime once the test has prepared the Chroma directory."""
    runtimes: list[KnowledgeRuntime] = []

    async def run() -> KnowledgeRuntime:
        rt = KnowledgeRuntime(settings, nats_server.url, metrics=Metrics(), run_worker=True,
                              embedder=embedder)
        await rt.__aenter__()
        runtimes.append(rt)
        return rt

    yield run
    for rt in runtimes:
        await rt.__aexit__(None, None, None)


async def held_then_applied(rt: KnowledgeRuntime, clear: Callable[[], None]) -> None:
    """Publish while the store is at fault; see them held; clear it; see them all apply."""
    worker = rt.worker
    for i in range(EVENTS):
        await publish_event(rt.nc, doc(i))
    await wait_for(lambda: worker.store_fault is not None)
    assert worker.store_fault_since is not None
    await asyncio.sleep(1.5)  # several probe intervals and redeliveries at fault
    assert await applied(rt) == 0
    assert rt.metrics.dead_letters._value.get() == 0
    clear()
    deadline = asyncio.get_running_loop().time() + 60
    while await applied(rt) < EVENTS:
        assert asyncio.get_running_loop().time() < deadline, "not every event applied"
        await asyncio.sleep(0.2)
    assert worker.store_fault is None and worker.store_fault_since is None
    assert rt.metrics.dead_letters._value.get() == 0
    assert rt.metrics.store_fault_holds._value.get() >= 1
    hits = (await rt.kb.search("article number 3 explains topic 3")).hits
    assert hits and hits[0].doc_id == "doc-3"
    assert rt.kb.store.count(Tier.hot) == EVENTS


async def test_a_read_only_store_holds_events_until_it_is_writable_again(
        start, mounts: list[Path]) -> None:
    rt = await start()
    chroma = rt.settings.chroma_dir
    # Chroma has its files open already; a read-only bind mount over the directory makes
    # every new write fail ("unable to open database file"), as a remounted volume would.
    mount("--bind", str(chroma), str(chroma))
    mounts.append(chroma)
    mount("-o", "remount,ro,bind", str(chroma))
    await held_then_applied(rt, lambda: unmount(chroma))


async def test_a_full_disk_holds_events_until_space_is_freed(
        start, settings: Settings, mounts: list[Path]) -> None:
    chroma = settings.chroma_dir
    chroma.mkdir(parents=True)
    mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(chroma))
    mounts.append(chroma)
    rt = await start()
    ballast = chroma / "ballast"
    with ballast.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 20))
    await held_then_applied(rt, ballast.unlink)


async def test_a_waiting_write_during_a_store_fault_is_accepted_and_held_at_once(
        settings: Settings, mounts: list[Path]) -> None:
    """``POST /v1/documents?wait=true`` while the store fails: 202 ``held`` with the
    reason, not a wait that runs out; the change applies once the store is back."""
    settings.wait_timeout_s = 120.0  # a wait that ran out would fail the test's timeout
    async with run_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.base_url,
                                                             timeout=60) as client:
        body = doc(0).model_dump(mode="json", exclude_none=True)
        first = await client.post("/v1/documents", params={"wait": "true"}, json=body)
        assert first.status_code == 200 and first.json()["outcome"] == "applied"
        chroma = settings.chroma_dir
        mount("--bind", str(chroma), str(chroma))
        mounts.append(chroma)
        mount("-o", "remount,ro,bind", str(chroma))
        worker = gw.app.state.duet.runtime.worker
        # The first write after the store broke: the worker meets the fault while the
        # request waits, and the wait ends then.
        assert worker.store_fault is None
        during = await client.post("/v1/documents", params={"wait": "true"},
                                   json=doc(1).model_dump(mode="json"))
        assert during.status_code == 202, during.text
        assert during.json()["outcome"] == "held" and during.json()["doc_id"] == "doc-1"
        assert worker.store_fault is not None
        # Once the fault is known, a waiting write is held at once.
        held = await client.post("/v1/documents", params={"wait": "true"},
                                 json=doc(2).model_dump(mode="json"))
        assert held.status_code == 202
        assert held.json()["outcome"] == "held" and held.json()["event_id"]
        assert held.json()["reason"].startswith("store fault: ")
        unmount(chroma)
        for doc_id in ("doc-1", "doc-2"):
            for _ in range(600):
                got = await client.get(f"/v1/documents/{doc_id}")
                if got.status_code == 200 and got.json()["tier"] == "hot":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{doc_id} was not applied once the store was back")
