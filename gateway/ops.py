"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.

``/healthz`` serves the last round of the background prober (:mod:`gateway.health`) and each
background task's state; it never probes on a request. It is 503 while a dependency is down
or a task has died. It is open, but only operators (``api`` or ``supervisor``) see the details
(dependencies, the NATS address without its credentials, errors); anyone else gets
``{"status": ...}``.

``/readyz`` is for load balancers: 200 ``{"status": "ready"}`` only while the gateway can
take traffic (started, NATS connected, the store readable, not shutting down), else 503
``{"status": "not_ready"}``. ``/metrics`` needs an operator.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import operators_for, require_operator
from gateway.errors import RETRY_AFTER_S
from gateway.health import HealthProber
from gateway.state import AppState

__all__ = ["routes"]


def _prober(request: Request) -> HealthProber | None:
    return getattr(request.app.state, "health", None)


async def healthz(request: Request) -> JSONResponse:
    """Each dependency's (last probe) and each background task's state; 503 when any is down."""
    state: AppState | None = getattr(request.app.state, "duet", None)
    prober = _prober(request)
    if state is None or prober is None:
        return JSONResponse({"status": "starting"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    runtime = state.runtime
    deps = {name: check.as_dict() for name, check in prober.current().items()}
    tasks = {name: task.as_dict() for name, task in sorted(runtime.tasks.report().items())}
    ok = prober.healthy and all(t["ok"] for t in tasks.values())
    status_code = 200 if ok else 503
    verdict = "ok" if ok else "degraded"
    if operators_for(request).identify(request) is None:
        return JSONResponse({"status": verdict}, status_code=status_code)
    as_of = runtime.as_of
    return JSONResponse({"status": verdict, "dependencies": deps, "tasks": tasks,
                         "as_of": as_of.isoformat() if as_of else None},
                        status_code=status_code)


async def readyz(request: Request) -> JSONResponse:
    """200 while the gateway can take traffic, else 503 (open; minimal body)."""
    prober = _prober(request)
    ready = prober is not None and prober.ready()[0]
    if ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not_ready"}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


@require_operator("api", "supervisor")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    state: AppState = request.app.state.duet
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
          Route("/metrics", metrics, methods=["GET"])]
