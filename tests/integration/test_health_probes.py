"""The health prober (gateway/health.py) against real NATS and Chroma: what each probe
finds, that the write probe leaves nothing behind, and that a read-only store is down."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from core.metrics import Metrics
from core.natsd import EmbeddedNats
from gateway.health import HealthProber
from ingest.runtime import KnowledgeRuntime
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def _run(*cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, check=False)


def _prober(runtime: KnowledgeRuntime, **overrides) -> HealthProber:
    settings = runtime.settings.model_copy(update=overrides)
    return HealthProber(settings, runtime, metrics=Metrics())


async def test_every_probe_passes_and_the_write_probe_leaves_nothing(
        runtime: KnowledgeRuntime) -> None:
    prober = _prober(runtime)
    for _ in range(5):
        await prober.probe_once()
    checks = prober.checks
    assert {"nats", "chroma", "disk", "embeddings", "ingest_worker"} == set(checks)
    assert all(check.status in ("ok", "slow", "low") for check in checks.values()), checks
    assert checks["chroma"].detail["readable"] and checks["chroma"].detail["writable"]
    assert prober.healthy
    probe = prober._probe_collection
    assert probe.count() == 0  # upserted and deleted every round
    assert probe.name.endswith("_health")


async def test_low_disk_is_a_warning_and_no_disk_is_down(runtime: KnowledgeRuntime) -> None:
    warn = _prober(runtime, health_disk_warn_mb=10**9, health_disk_min_mb=0)
    await warn.probe_once()
    assert warn.checks["disk"].status == "low" and warn.healthy
    full = _prober(runtime, health_disk_warn_mb=10**9, health_disk_min_mb=10**9)
    await full.probe_once()
    assert full.checks["disk"].status == "down" and not full.healthy


async def test_nats_down_is_reported_at_once_and_after_the_next_round(
        tmp_path: Path, embedder) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    settings = make_settings(tmp_path, server.url)
    try:
        async with KnowledgeRuntime(settings, server.url, metrics=Metrics(), run_worker=False,
                                    embedder=embedder) as runtime:
            prober = _prober(runtime)
            await prober.probe_once()
            assert prober.checks["nats"].ok and not prober.nats_down()
            server.stop()
            for _ in range(100):
                if not runtime.nc.is_connected:
                    break
                await asyncio.sleep(0.05)
            assert prober.nats_down() and not prober.healthy  # before any new round
            await prober.probe_once()
            assert prober.checks["nats"].status == "down"
    finally:
        server.stop()


async def test_a_read_only_store_is_down(runtime: KnowledgeRuntime) -> None:
    chroma_dir = runtime.settings.chroma_dir
    mounted = _run("mount", "--bind", str(chroma_dir), str(chroma_dir))
    if mounted.returncode != 0:
        pytest.skip("cannot bind-mount (needs root)")
    try:
        remount = _run("mount", "-o", "remount,ro,bind", str(chroma_dir))
        assert remount.returncode == 0, remount.stderr
        prober = _prober(runtime)
        await prober.probe_once()
        chroma = prober.checks["chroma"]
        assert chroma.status == "down" and "write failed" in (chroma.error or ""), chroma
        assert chroma.detail["readable"]
        assert not prober.healthy
    finally:
        _run("umount", "-l", str(chroma_dir))
