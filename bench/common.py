"""Shared helpers of the benchmarks: percentiles, a throwaway NATS + runtime, reports."""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from core.metrics import Metrics
from core.natsd import EmbeddedNats
from core.settings import Settings
from ingest.runtime import KnowledgeRuntime

RESULTS = Path("bench-results")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max of a list of milliseconds."""
    return {"n": len(values), "p50": round(pct(values, 50), 2), "p90": round(pct(values, 90), 2),
            "p99": round(pct(values, 99), 2), "mean": round(statistics.fmean(values), 2),
            "max": round(max(values), 2)}


def save(name: str, data: dict) -> None:
    """Write one benchmark's figures to bench-results/NAME.json and print them."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"\n== {name}\n{json.dumps(data, indent=2, default=str)}", flush=True)


@contextlib.asynccontextmanager
async def scratch_runtime(**overrides) -> AsyncIterator[KnowledgeRuntime]:
    """A knowledge runtime with its worker on a throwaway NATS and Chroma."""
    with tempfile.TemporaryDirectory(prefix="duet-bench-") as tmp:
        root = Path(tmp)
        async with EmbeddedNats(root / "nats") as server:
            settings = Settings(_env_file=None, data_dir=root / "data", nats_url=server.url,
                                load_sample_kb=False, aging_interval_s=3600, **overrides)
            async with KnowledgeRuntime(settings, server.url, metrics=Metrics(),
                                        run_worker=True) as runtime:
                yield runtime
