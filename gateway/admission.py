"""Admission control: how much one client address, and everyone together, may hold or ask.

:class:`AdmissionMiddleware` wraps the whole app (outermost), so every transport — the chat
and voice websockets, HTTP chat, the supervisor and console sockets, the widget, the
WhatsApp webhook — is covered without the channels knowing:

- **connections**: open websockets plus in-flight HTTP requests, per client address
  (``DUET_CONN_PER_ADDRESS``) and in total (``DUET_CONN_TOTAL``). Over the limit a
  websocket is accepted and closed at once with code ``1013`` (try again later) and a
  reason; an HTTP request gets ``429`` (per address) or ``503`` (total) with
  ``Retry-After`` and the JSON error body of :mod:`gateway.errors`.
- **rates**: the caller's :class:`Client` is left in :data:`current_client` for the rest of
  the request, and :class:`~gateway.service.ChatService` spends from its address's token
  buckets on every session opened (``DUET_SESSION_OPEN_RATE_PER_S`` / ``_BURST``) and
  every message (``DUET_ADDRESS_MESSAGE_RATE_PER_S`` / ``_BURST``). The buckets live in a
  :class:`RateTable` of at most ``DUET_ADMISSION_TABLE_SIZE`` addresses: the least recently
  seen address goes first, so the table itself cannot grow without limit.

The client address is the socket peer; an IPv6 peer counts by its /64 (one host usually
has a whole /64). When the peer is one of ``DUET_TRUSTED_PROXIES`` the address is taken
from ``X-Forwarded-For`` (the right-most entry that is not a trusted proxy).

Not limited at all: ``/healthz``, ``/readyz`` and ``/metrics`` (probes must never be
starved by a flood), and callers presenting a valid operator token (``DUET_API_TOKENS``,
``DUET_SUPERVISOR_TOKENS``) — they are counted in the gauges, never refused.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from core.metrics import Metrics
from core.settings import Settings
from gateway.auth import OperatorAuth
from gateway.errors import send_refusal

__all__ = [
    "EXEMPT_PATHS",
    "Admission",
    "AdmissionMiddleware",
    "Client",
    "RateTable",
    "TrustedProxies",
    "address_key",
    "current_client",
]

log = logging.getLogger("duet.gateway")

#: Paths never limited (health probes and the scraper).
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: What a refused connection is asked to wait: a connection frees when someone leaves,
#: which nothing here can predict.
CONNECTION_RETRY_AFTER_S = 5

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_key(host: str) -> str:
    """The limit key of a peer address: IPv4 as is, IPv6 by its /64, anything else as is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TrustedProxies:
    """``DUET_TRUSTED_PROXIES``: the peers whose ``X-Forwarded-For`` is believed."""

    def __init__(self, spec: str | None) -> None:
        self._nets: list[_Net] = [
            ipaddress.ip_network(part.strip(), strict=False)
            for part in (spec or "").split(",") if part.strip()]

    def __bool__(self) -> bool:
        return bool(self._nets)

    def trusted(self, host: str) -> bool:
        """Whether ``host`` is one of the trusted proxies."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._nets)

    def client_host(self, scope: Scope) -> str:
        """The caller's address: the peer, or behind trusted proxies the right-most
        ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
        peer = scope.get("client")
        host = peer[0] if peer else "unknown"
        if not self._nets or not self.trusted(host):
            return host
        forwarded: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                forwarded += [p.strip() for p in value.decode("latin-1").split(",")]
        for hop in reversed(forwarded):
            if not hop:
                continue
            if not self.trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return host  # garbage from a proxy we trust: count the proxy
        return host


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateTable:
    """Token buckets keyed by client address, at most ``max_keys`` of them.

    An address seen least recently is forgotten first; a forgotten address starts again
    with a full bucket, which is what an idle one would have anyway.
    """

    def __init__(self, *, burst: float, per_s: float, max_keys: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.per_s = per_s
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one token of ``key``: 0.0 if there was one, else the seconds until one."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.per_s)
            bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.per_s


def retry_after_s(wait_s: float) -> int:
    """Whole seconds for a ``Retry-After`` (at least 1)."""
    return max(1, math.ceil(wait_s))


@dataclass
class Client:
    """One caller, as admission sees it: its address key, and whether it is exempt."""

    address: str
    #: An operator (valid token) or a probe path: counted, never refused.
    exempt: bool = False
    _admission: Admission | None = field(default=None, repr=False)

    def take_session_open(self) -> float:
        """Spend a session-open token: 0.0, or the seconds to wait (counted as a refusal)."""
        if self.exempt or self._admission is None:
            return 0.0
        return self._admission.spend(self._admission.opens, self.address,
                                     "session_opens_per_address")

    def take_message(self) -> float:
        """Spend a message token: 0.0, or the seconds to wait (counted as a refusal)."""
        if self.exempt or self._admission is None:
            return 0.0
        return self._admission.spend(self._admission.messages, self.address,
                                     "messages_per_address")


#: The caller of the request being served (None outside a request: a background task).
current_client: ContextVar[Client | None] = ContextVar("duet_client", default=None)


@dataclass(frozen=True)
class Refusal:
    """Why a connection is not admitted."""

    limit: str
    status: int
    message: str


class Admission:
    """The counters and rate tables of one gateway process."""

    def __init__(self, settings: Settings, metrics: Metrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_address = settings.conn_per_address
        self.total = settings.conn_total
        self.metrics = metrics
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.operators = OperatorAuth(settings)
        self._operator_scopes = tuple(
            s for s in ("api", "supervisor") if self.operators.configured(s))  # type: ignore[arg-type]
        table = settings.admission_table_size
        self.opens = RateTable(burst=settings.session_open_burst,
                               per_s=settings.session_open_rate_per_s, max_keys=table,
                               clock=clock)
        self.messages = RateTable(burst=settings.address_message_burst,
                                  per_s=settings.address_message_rate_per_s, max_keys=table,
                                  clock=clock)
        self._open: dict[str, int] = {}
        self._open_total = 0

    def spend(self, table: RateTable, address: str, limit: str) -> float:
        """Take a token of ``address`` from ``table``; a refusal is counted as ``limit``."""
        wait_s = table.take(address)
        self.metrics.rate_table_addresses.labels(
            "opens" if table is self.opens else "messages").set(len(table))
        if wait_s > 0:
            self.metrics.refusals.labels(limit).inc()
        return wait_s

    def client(self, scope: Scope) -> Client:
        """Who is calling (address, and whether an operator token exempts them)."""
        address = address_key(self.proxies.client_host(scope))
        exempt = False
        if self._operator_scopes and _presents_token(scope):
            exempt = self.operators.identify(HTTPConnection(scope),
                                             self._operator_scopes) is not None
        return Client(address, exempt, self)

    def open_connections(self, address: str | None = None) -> int:
        """Connections open now: of ``address``, or in total."""
        return self._open_total if address is None else self._open.get(address, 0)

    def enter(self, client: Client, kind: str) -> Refusal | None:
        """Count a new connection in, or say why not (counted as a refusal)."""
        if not client.exempt:
            refusal = None
            if self._open.get(client.address, 0) >= self.per_address:
                refusal = Refusal("connections_per_address", 429,
                                  f"too many connections from your address (limit "
                                  f"{self.per_address}); try again later")
            elif self._open_total >= self.total:
                refusal = Refusal("connections_total", 503,
                                  "the gateway is at its connection limit; try again later")
            if refusal is not None:
                self.metrics.refusals.labels(refusal.limit).inc()
                return refusal
        self._open[client.address] = self._open.get(client.address, 0) + 1
        self._open_total += 1
        self.metrics.connections_open.labels(kind).inc()
        return None

    def leave(self, client: Client, kind: str) -> None:
        """Count a connection out."""
        left = self._open.get(client.address, 0) - 1
        if left > 0:
            self._open[client.address] = left
        else:
            self._open.pop(client.address, None)
        self._open_total -= 1
        self.metrics.connections_open.labels(kind).dec()


def _presents_token(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return True
    return b"token=" in scope.get("query_string", b"")


class AdmissionMiddleware:
    """Counts every connection in and out, refuses past the limits, and leaves the
    caller in :data:`current_client` for the services below."""

    def __init__(self, app: ASGIApp, admission: Admission,
                 exempt_paths: Iterable[str] = EXEMPT_PATHS) -> None:
        self.app = app
        self.admission = admission
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope.get("path") in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        client = admission.client(scope)
        refusal = admission.enter(client, kind)
        if refusal is not None:
            log.info("connection refused", extra={"limit": refusal.limit,
                                                  "address": client.address, "kind": kind})
            await _refuse(scope, receive, send, refusal)
            return
        token = current_client.set(client)
        try:
            await self.app(scope, receive, send)
        finally:
            current_client.reset(token)
            admission.leave(client, kind)


async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    if scope["type"] == "websocket":
        # 1013 "try again later" needs an open socket: accept, then close at once.
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1013,
                    "reason": refusal.message[:120]})
        return
    await send_refusal(scope, send, refusal.status,
                       "rate_limited" if refusal.status == 429 else "unavailable",
                       refusal.message, retry_after_s=CONNECTION_RETRY_AFTER_S)
