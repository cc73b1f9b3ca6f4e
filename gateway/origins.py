"""Host and Origin checks: DNS rebinding and cross-site browser requests (PROTOCOL §0).

- :class:`HostGuard` answers only to the ``Host`` names of ``DUET_ALLOWED_HOSTS``
  (default: the loopback names, plus ``DUET_HOST`` when it is a name or a unicast address).
  A page on ``evil.example`` whose name was rebound to 127.0.0.1 sends
  ``Host: evil.example`` and is refused.
- :class:`OriginGuard` refuses HTTP requests and websocket upgrades whose ``Origin`` is
  neither in ``DUET_ALLOWED_ORIGINS`` nor the gateway's own origin (the scheme-less
  ``host:port`` the request was sent to). No ``Origin``: a non-browser client, accepted.
  Browsers send no preflight for a websocket, so this check is the only one there.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import ValidationError
from gateway.errors import send_refusal

__all__ = ["HostGuard", "OriginGuard", "allowed_hosts", "allowed_origins", "browser_origins"]

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_WILDCARD_BINDS = {"", "0.0.0.0", "::", "[::]"}
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _split_host(value: str) -> tuple[str, int | None]:
    """``name[:port]`` or ``[v6][:port]`` → (lower-case name without brackets, port)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""  # a bare v6 address or a plain name
    if port and not port.isdigit():
        raise ValueError(f"bad port in {value!r}")
    return name.rstrip("."), int(port) if port else None


def allowed_hosts(setting: str | None, bind_host: str) -> tuple[str, ...]:
    """Host names (``*.example.com``, ``*``) from the setting, or the defaults."""
    if setting and setting.strip():
        names = [h.strip() for h in setting.split(",") if h.strip()]
    else:
        names = list(_LOOPBACK_NAMES)
        if bind_host.strip() not in _WILDCARD_BINDS:
            names.append(bind_host)
    try:
        return tuple(dict.fromkeys(_split_host(n)[0] if n != "*" else "*" for n in names))
    except ValueError as exc:
        raise ValidationError(f"DUET_ALLOWED_HOSTS: {exc}") from None


def _normal_origin(origin: str) -> str | None:
    """``scheme://host:port`` with the default port made explicit; None if not an origin."""
    try:
        parts = urlsplit(origin.strip())
        name, port = _split_host(parts.netloc)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not name or "@" in parts.netloc:
        return None
    return f"{scheme}://{name}:{port or _DEFAULT_PORTS[scheme]}"


def allowed_origins(setting: str | None) -> frozenset[str]:
    """The configured origins, normalised (``*``: any origin)."""
    if not setting:
        return frozenset()
    found: set[str] = set()
    for item in (o.strip() for o in setting.split(",")):
        if item == "*":
            found.add("*")
        elif item:
            normal = _normal_origin(item)
            if normal is None:
                raise ValidationError(f"DUET_ALLOWED_ORIGINS: {item!r} is not an origin")
            found.add(normal)
    return frozenset(found)


def browser_origins(origins: frozenset[str]) -> list[str]:
    """Normalised origins as browsers send them (default port left out, v6 in brackets)."""
    sent = []
    for origin in sorted(origins):
        if origin == "*":
            sent.append(origin)
            continue
        scheme, _, netloc = origin.partition("://")
        name, _, port = netloc.rpartition(":")
        host = f"[{name}]" if ":" in name else name
        sent.append(f"{scheme}://{host}" if int(port) == _DEFAULT_PORTS[scheme]
                    else f"{scheme}://{host}:{port}")
    return sent


class HostGuard:
    """403 for a ``Host`` header that names none of the allowed hosts."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.exact = {h for h in allowed if not h.startswith("*")}
        self.suffixes = tuple(h[1:] for h in allowed if h.startswith("*."))

    def allows(self, host_header: str) -> bool:
        """Whether a ``Host`` header value is one of ours."""
        if self.any:
            return True
        try:
            name, _ = _split_host(host_header)
        except ValueError:
            return False
        return name in self.exact or (bool(name) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.allows(
                Headers(scope=scope).get("host", "")):
            await send_refusal(scope, send, 403, "forbidden", "Host not allowed")
            return
        await self.app(scope, receive, send)


class OriginGuard:
    """403 for a request or websocket upgrade from a foreign browser ``Origin``."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    def allows(self, origin: str, host_header: str) -> bool:
        """Whether ``origin`` may talk to the gateway reached at ``host_header``."""
        if "*" in self.allowed:
            return True
        normal = _normal_origin(origin)
        if normal is None:  # "null" (sandboxed frames, file:), garbage
            return False
        if normal in self.allowed:
            return True
        try:
            name, port = _split_host(host_header)
        except ValueError:
            return False
        scheme, _, netloc = normal.partition("://")
        origin_name, _, origin_port = netloc.rpartition(":")
        # Same origin: the name the browser sent the request to, on the same port (the
        # Host header omits a default port, and a TLS proxy may change the scheme).
        return origin_name == name and (
            int(origin_port) == port if port is not None
            else int(origin_port) == _DEFAULT_PORTS[scheme])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self.allows(origin, headers.get("host", "")):
                await send_refusal(scope, send, 403, "forbidden", "Origin not allowed")
                return
        await self.app(scope, receive, send)
