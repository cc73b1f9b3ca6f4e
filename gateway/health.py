"""The background health prober behind ``/healthz`` and ``/readyz``.

Every ``DUET_HEALTH_INTERVAL_S`` one round of probes tests what ``/healthz`` reports, each
with a timeout (``DUET_HEALTH_TIMEOUT_S``), and keeps the results; the endpoints serve the
last round (a request never probes). A probe writes where it can:

=============  ==========================================================================
check          what it does
=============  ==========================================================================
nats           connected, ``stream_info`` of the document stream, and a KV put to the tiny
               probe bucket (``DUET_HEALTH_PROBE_BUCKET``): JetStream can store
chroma         ``count`` of the hot collection (readable) and an upsert + delete of one
               record in a dedicated probe collection (writable; nothing is left behind)
disk           free space of the data dir (``DUET_HEALTH_DISK_WARN_MB`` / ``_MIN_MB``)
embeddings     the model is loaded
ingest_worker  the worker task runs and the worker reports no store fault
=============  ==========================================================================

A check is ``ok``, ``slow`` (answered, after more than ``DUET_HEALTH_SLOW_S``), ``low`` (disk
below the warning level) or ``down``; only ``down`` makes ``/healthz`` 503. Each change of a
check's status is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from core.metrics import Metrics
from core.natsd import EmbeddedNats, redact_url
from core.settings import Settings
from core.streams import ensure_kv
from ingest.runtime import KnowledgeRuntime
from ingest.store import Tier

__all__ = ["Check", "HealthProber", "Status"]

log = logging.getLogger("duet.health")

Status = Literal["ok", "slow", "low", "down"]

_NOT_CONNECTED = "not connected"
#: the id of the one record the write probe puts into (and removes from) its collection.
_PROBE_ID = "duet-health-probe"


@dataclass
class Check:
    """The last result of one dependency's probe."""

    status: Status
    #: how long the probe took, in milliseconds (None: nothing was timed).
    latency_ms: float | None = None
    error: str | None = None
    #: more facts for operators (counts, addresses, free space).
    detail: dict[str, Any] = field(default_factory=dict)
    #: when the status last changed (monotonic seconds).
    since: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        """Usable (``slow`` and ``low`` are warnings, not outages)."""
        return self.status != "down"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form for ``/healthz``."""
        out: dict[str, Any] = {"ok": self.ok, "status": self.status, **self.detail,
                               "for_s": round(time.monotonic() - self.since, 1)}
        if self.latency_ms is not None:
            out["latency_ms"] = round(self.latency_ms, 1)
        if self.error:
            out["error"] = self.error
        return out


class _Down(Exception):
    """A probe's finding: the dependency is not usable (the message says why)."""


class HealthProber:
    """Probes the dependencies in the background; serves the last results."""

    def __init__(self, settings: Settings, runtime: KnowledgeRuntime, *,
                 metrics: Metrics, embedded: EmbeddedNats | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.embedded = embedded
        self.checks: dict[str, Check] = {}
        #: set by the app once every channel has started; cleared when it shuts down.
        self.accepting = False
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._restarts_seen = 0
        self._probe_collection: Any = None
        self._chroma_call: asyncio.Future[None] | None = None

    async def __aenter__(self) -> HealthProber:
        await self.probe_once()
        self._task = asyncio.create_task(self._loop(), name="health-prober")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.accepting = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self.probe_once()
            except Exception:  # a bug in a probe must not end probing
                log.exception("health probe round failed")

    # --- the verdicts -------------------------------------------------------------------

    def current(self) -> dict[str, Check]:
        """The last round's results, and what is known for free since: a connection that
        is lost now makes ``nats`` down at once, without waiting for the next round."""
        checks = dict(self.checks)
        nc = self.runtime.nc
        last = checks.get("nats")
        if last is not None and last.ok and (nc is None or not nc.is_connected):
            checks["nats"] = Check("down", error=_NOT_CONNECTED, detail=last.detail)
        return checks

    def nats_down(self) -> bool:
        """Whether NATS or JetStream is unusable now (refuse writes at once): disconnected,
        or JetStream failing at the last probe (a lost connection that is back since is
        left to the write itself)."""
        nc = self.runtime.nc
        if nc is None or not nc.is_connected:
            return True
        check = self.checks.get("nats")
        return check is not None and not check.ok and check.error != _NOT_CONNECTED

    def store_fault(self) -> str | None:
        """What keeps document changes from being applied now: the in-process worker's
        store fault, or the store down at the last probe; None when nothing is known."""
        fault = getattr(self.runtime.worker, "store_fault", None)
        if fault:
            return f"store fault: {fault}"
        check = self.checks.get("chroma")
        if check is not None and not check.ok:
            return f"the vector store is down: {check.error or 'no answer'}"
        return None

    @property
    def healthy(self) -> bool:
        """Whether no dependency is down (the tasks are judged by the caller)."""
        return all(check.ok for check in self.current().values())

    def ready(self) -> tuple[bool, str | None]:
        """Whether the gateway can take traffic now, else the first reason why not."""
        if not self.accepting:
            return False, "starting or stopping"
        nc = self.runtime.nc
        if nc is None or not nc.is_connected:
            return False, "nats"
        chroma = self.checks.get("chroma")
        if chroma is None or not chroma.detail.get("readable", False):
            return False, "store"
        return True, None

    # --- one round ----------------------------------------------------------------------

    async def probe_once(self) -> None:
        """Run every probe once (concurrently) and record the results."""
        probes: dict[str, Callable[[], Awaitable[Check]]] = {
            "nats": self._probe_nats, "chroma": self._probe_chroma,
        }
        names = list(probes)
        results = await asyncio.gather(*(self._timed(name, probes[name]) for name in names))
        found = dict(zip(names, results, strict=True))
        found["disk"] = self._probe_disk()
        found["embeddings"] = self._probe_embeddings()
        if self.runtime.run_worker:
            found["ingest_worker"] = self._probe_worker()
        for name, check in found.items():
            self._record(name, check)
        self._count_restarts()

    async def _timed(self, name: str, probe: Callable[[], Awaitable[Check]]) -> Check:
        started = time.perf_counter()
        timeout_s = self.settings.health_timeout_s
        try:
            check = await asyncio.wait_for(probe(), timeout_s)
        except TimeoutError:
            check = Check("down", error=f"no answer within {timeout_s:g}s")
        except _Down as exc:
            check = Check("down", error=str(exc))
        except Exception as exc:
            check = Check("down", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        elapsed_s = time.perf_counter() - started
        check.latency_ms = elapsed_s * 1000
        if check.status == "ok" and elapsed_s > self.settings.health_slow_s:
            check.status = "slow"
        self.metrics.health_probe_seconds.labels(name).observe(elapsed_s)
        return check

    def _record(self, name: str, check: Check) -> None:
        before = self.checks.get(name)
        if before is not None and before.status == check.status:
            check.since = before.since
        elif before is not None or check.status != "ok":
            level = logging.INFO if check.status == "ok" else logging.WARNING
            log.log(level, "%s is %s", name, check.status,
                    extra={"check": name, "status": check.status, "reason": check.error,
                           "was": before.status if before else None})
        self.checks[name] = check
        self.metrics.dependency_up.labels(name).set(1.0 if check.ok else 0.0)

    def _count_restarts(self) -> None:
        if self.embedded is None:
            return
        new = self.embedded.restarts - self._restarts_seen
        if new > 0:
            self.metrics.nats_restarts.inc(new)
            self._restarts_seen = self.embedded.restarts

    # --- the probes ---------------------------------------------------------------------

    async def _probe_nats(self) -> Check:
        runtime = self.runtime
        detail: dict[str, Any] = {"url": redact_url(runtime.nats_url)}
        if self.embedded is not None:
            detail["embedded"] = {"state": self.embedded.state,
                                  "restarts": self.embedded.restarts}
        nc = runtime.nc
        if nc is None or not nc.is_connected:
            return Check("down", error=_NOT_CONNECTED, detail=detail)
        if self.embedded is not None and self.embedded.state == "storage_fault":
            return Check("down", error="JetStream cannot write its store (disk full?)",
                         detail=detail)
        js = nc.jetstream(timeout=self.settings.health_timeout_s)
        try:
            info = await js.stream_info(self.settings.stream_name)
        except Exception as exc:
            raise _Down(f"JetStream unusable: {_describe(exc)}") from exc
        detail["stream_messages"] = info.state.messages
        try:
            kv = await self._probe_bucket()
            await kv.put("probe", str(time.time()).encode())
        except Exception as exc:
            self._kv = None  # a restarted server may have lost the bucket: open it again
            raise _Down(f"JetStream cannot store: {_describe(exc)}") from exc
        return Check("ok", detail=detail)

    async def _probe_bucket(self) -> KeyValue:
        if self._kv is None:
            nc = self.runtime.nc
            assert nc is not None
            js = nc.jetstream(timeout=self.settings.health_timeout_s)
            bucket = self.settings.health_probe_bucket
            # file storage: the probe must fail when the disk cannot take a write
            self._kv = await ensure_kv(js, KeyValueConfig(
                bucket=bucket, history=1, storage=StorageType.FILE, max_bytes=64 * 1024,
                max_value_size=1024, ttl=300.0))
        return self._kv

    async def _probe_chroma(self) -> Check:
        kb = self.runtime.kb
        mode = "server" if self.settings.chroma_url else "embedded"
        if kb is None:
            return Check("down", error="not open", detail={"mode": mode})
        detail: dict[str, Any] = {"mode": mode, "readable": False, "writable": False}
        if self._chroma_call is not None and not self._chroma_call.done():
            # a hung call keeps its thread: never start a second one beside it
            return Check("down", error="the previous probe has not returned", detail=detail)
        self._chroma_call = asyncio.get_running_loop().run_in_executor(
            None, self._chroma_round, kb.store, detail)
        try:
            await asyncio.shield(self._chroma_call)
        except Exception as exc:
            self._probe_collection = None
            what = "write" if detail["readable"] else "read"
            return Check("down", error=f"{what} failed: {_describe(exc)}", detail=detail)
        return Check("ok", detail=detail)

    def _chroma_round(self, store: Any, detail: dict[str, Any]) -> None:
        """On a thread: count each tier (readable), then the write probe (writable)."""
        detail["chunks"] = {t.value: store.count(t) for t in Tier}
        detail["readable"] = True
        detail["writable"] = self._write_probe(store)

    def _write_probe(self, store: Any) -> bool | None:
        """Upsert and delete one record in the probe collection (None: not a Chroma store)."""
        client = getattr(store, "_client", None)
        if client is None:
            return None
        if self._probe_collection is None:
            self._probe_collection = client.get_or_create_collection(
                f"{self.settings.collection_prefix}_health", embedding_function=None)
        lock = getattr(store, "_write_lock", None)  # Chroma's embedded writer: one at a time
        if lock is not None:
            with lock:
                self._upsert_and_delete()
        else:
            self._upsert_and_delete()
        return True

    def _upsert_and_delete(self) -> None:
        collection = self._probe_collection
        collection.upsert(ids=[_PROBE_ID], embeddings=[[1.0]], documents=["probe"])
        collection.delete(ids=[_PROBE_ID])

    def _probe_disk(self) -> Check:
        s = self.settings
        try:
            usage = shutil.disk_usage(s.data_dir)
        except OSError as exc:
            return Check("down", error=f"cannot stat the data dir: {exc.strerror}")
        free_mb = usage.free / 2**20
        detail = {"free_mb": round(free_mb, 1), "warn_mb": s.health_disk_warn_mb,
                  "min_mb": s.health_disk_min_mb}
        self.metrics.data_dir_free_bytes.set(usage.free)
        if free_mb < s.health_disk_min_mb:
            return Check("down", error="the data dir is (nearly) full", detail=detail)
        if free_mb < s.health_disk_warn_mb:
            return Check("low", detail=detail)
        return Check("ok", detail=detail)

    def _probe_embeddings(self) -> Check:
        kb = self.runtime.kb
        if kb is None:
            return Check("down", error="no model loaded")
        return Check("ok", detail={"model": getattr(kb.embedder, "model_id", None)})

    def _probe_worker(self) -> Check:
        runtime = self.runtime
        if not runtime.worker_alive:
            return Check("down", error="the worker task is not running")
        fault = getattr(runtime.worker, "store_fault", None)
        if fault:
            return Check("down", error=f"store fault: {fault}")
        return Check("ok")


def _describe(exc: BaseException) -> str:
    """A short, credential-free description of a probe's failure."""
    text = getattr(exc, "description", None) or str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
