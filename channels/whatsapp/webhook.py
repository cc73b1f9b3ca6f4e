"""``/channels/whatsapp/webhook``: Meta's verification handshake and its deliveries.

``GET`` answers the subscription handshake: ``hub.mode=subscribe`` with the configured
``hub.verify_token`` gets ``hub.challenge`` back, anything else ``403``. ``POST`` checks
``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with the app secret, compared in
constant time; bad or missing: ``401``, nothing processed), persists the body in the
channel's JetStream inbox and answers ``200`` at once: the work happens after, so a slow
answer never makes Meta retry, and a delivery accepted is never lost (``503`` when the inbox
cannot take it, and Meta retries).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from channels.whatsapp.metrics import WhatsAppMetrics
from channels.whatsapp.payload import signature_ok
from channels.whatsapp.store import WhatsAppStore
from core.errors import DependencyError, ForbiddenError, UnauthorizedError
from core.settings import Settings

__all__ = ["WEBHOOK_PATH", "webhook_routes"]

WEBHOOK_PATH = "/channels/whatsapp/webhook"


def webhook_routes(settings: Settings,
                   runtime: Callable[[], tuple[WhatsAppStore, WhatsAppMetrics]]) -> list[Route]:
    """The webhook's two routes; ``runtime()`` gives the store and metrics once started."""
    verify = settings.whatsapp_verify_token
    secret = settings.whatsapp_app_secret

    async def handshake(request: Request) -> Response:
        params = request.query_params
        token = params.get("hub.verify_token", "")
        if (verify is None or params.get("hub.mode") != "subscribe"
                or not hmac.compare_digest(token.encode(), verify.get_secret_value().encode())):
            raise ForbiddenError("webhook verification refused")
        return PlainTextResponse(params.get("hub.challenge", ""))

    async def deliver(request: Request) -> Response:
        store, metrics = runtime()
        body = await request.body()
        if secret is None or not signature_ok(secret.get_secret_value().encode(), body,
                                              request.headers.get("x-hub-signature-256")):
            metrics.webhooks.labels("bad_signature").inc()
            raise UnauthorizedError("invalid webhook signature")
        try:
            await store.enqueue(body)
        except DependencyError:
            metrics.webhooks.labels("unavailable").inc()
            raise
        metrics.webhooks.labels("accepted").inc()
        return PlainTextResponse("ok")

    return [Route(WEBHOOK_PATH, handshake, methods=["GET"]),
            Route(WEBHOOK_PATH, deliver, methods=["POST"])]
