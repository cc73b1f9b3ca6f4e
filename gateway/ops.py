"""``GET /healthz`` and ``GET /metrics``.

``/healthz`` is open, but only operators (``api`` or ``supervisor``) see the details
(dependencies, the NATS address without its credentials, errors); anyone else gets
``{"status": ...}``. ``/metrics`` needs an operator.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.natsd import redact_url
from gateway.auth import operators_for, require_operator
from gateway.state import AppState
from ingest.store import Tier

__all__ = ["routes"]


async def healthz(request: Request) -> JSONResponse:
    """Liveness, each dependency's and each background task's state; 503 when any is down."""
    state: AppState = request.app.state.duet
    runtime = state.runtime
    deps: dict[str, dict[str, object]] = {}
    nc = runtime.nc
    deps["nats"] = {"ok": bool(nc and nc.is_connected),
                    "url": redact_url(runtime.nats_url)}
    try:
        assert runtime.kb is not None
        counts = {t.value: await asyncio.wait_for(
            asyncio.to_thread(runtime.kb.store.count, t), 2.0) for t in Tier}
        deps["chroma"] = {"ok": True, "chunks": counts,
                          "mode": "server" if state.settings.chroma_url else "embedded"}
    except Exception as exc:  # report, don't crash the probe
        deps["chroma"] = {"ok": False, "error": str(exc)}
    deps["embeddings"] = {"ok": runtime.kb is not None,
                          "model": getattr(runtime.kb.embedder, "model_id", None)
                          if runtime.kb else None}
    if runtime.run_worker:
        deps["ingest_worker"] = {"ok": runtime.worker_alive}
    tasks = {name: task.as_dict() for name, task in sorted(runtime.tasks.report().items())}
    as_of = runtime.as_of
    ok = all(bool(d["ok"]) for d in deps.values()) and all(t["ok"] for t in tasks.values())
    status_code = 200 if ok else 503
    if operators_for(request).identify(request) is None:
        return JSONResponse({"status": "ok" if ok else "degraded"}, status_code=status_code)
    return JSONResponse({"status": "ok" if ok else "degraded", "dependencies": deps,
                         "tasks": tasks, "as_of": as_of.isoformat() if as_of else None},
                        status_code=status_code)


@require_operator("api", "supervisor")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    state: AppState = request.app.state.duet
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
