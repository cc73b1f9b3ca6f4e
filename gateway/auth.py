"""Identity and access (PROTOCOL §0): who a caller is, and what it may do.

- :class:`Identity` — a customer as the chat path sees it: a token's ``sub`` or a
  server-set channel id, and the ACL groups (always with ``public``).
- :class:`CustomerTokens` — verifies the JWT the company's backend signs (HS256 with
  ``DUET_CUSTOMER_TOKEN_SECRET``; RS256/ES256 with ``DUET_CUSTOMER_TOKEN_PUBLIC_KEY``).
  Each key has its one pinned algorithm: never ``none``, never HMAC with a public key.
- :class:`OperatorAuth` — bearer tokens of operators (``DUET_API_TOKENS``,
  ``DUET_SUPERVISOR_TOKENS``); with none configured for a scope, loopback callers only,
  and a request that carries proxy headers is not a loopback caller.
- :func:`require_operator` — the guard of an endpoint.
- :func:`security_middleware` — the Host, Origin/CORS, access-context and body-limit
  middleware, in order.

A refusal raises :class:`~core.errors.UnauthorizedError` with a message that says nothing
about which check failed; the reason goes to the log at debug level.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from pydantic import SecretStr
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import UnauthorizedError, ValidationError
from core.settings import Settings
from gateway.limits import BodyLimitMiddleware
from gateway.origins import (
    HostGuard,
    OriginGuard,
    allowed_hosts,
    allowed_origins,
    browser_origins,
)

__all__ = [
    "PUBLIC_GROUP",
    "CustomerTokens",
    "Identity",
    "OperatorAuth",
    "OperatorScope",
    "customers_for",
    "is_loopback_client",
    "operators_for",
    "parse_operator_tokens",
    "require_operator",
    "security_middleware",
]

log = logging.getLogger("duet.gateway.auth")

PUBLIC_GROUP = "public"
OperatorScope = Literal["api", "supervisor"]

_MAX_TOKEN_CHARS = 8192
_MAX_SUB_CHARS = 200
_MAX_GROUP_CHARS = 100
_MIN_SECRET_BYTES = 32
_MIN_OPERATOR_TOKEN_CHARS = 16
_PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
_REJECTED = "invalid customer token"
_OPERATOR_REQUIRED = "a valid operator token is required"


def _with_public(groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([PUBLIC_GROUP, *groups]))


@dataclass(frozen=True)
class Identity:
    """A customer: who (``customer_id``) and which ACL groups they read."""

    #: the token's ``sub``, a channel-set id (``whatsapp:+15551234``), or None (anonymous).
    customer_id: str | None
    #: ACL groups; always contains ``public``.
    groups: tuple[str, ...] = (PUBLIC_GROUP,)
    #: True when no verified token or channel vouches for the customer.
    anonymous: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", _with_public(self.groups))

    @classmethod
    def anonymous_customer(cls) -> Identity:
        """A customer without a token: group ``public`` only."""
        return cls(customer_id=None, groups=(PUBLIC_GROUP,), anonymous=True)

    @classmethod
    def for_channel(cls, customer_id: str, groups: Iterable[str] = (PUBLIC_GROUP,)) -> Identity:
        """An identity a channel adapter vouches for on the server side (a sender's number)."""
        if not customer_id:
            raise ValueError("a channel identity needs a customer id")
        return cls(customer_id=customer_id, groups=tuple(groups), anonymous=False)


# --- customer tokens --------------------------------------------------------------------

def _asymmetric_algorithm(key: object) -> str:
    """The one algorithm a key is used with."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    raise ValidationError("customer token key must be an RSA or an EC (P-256/384/521) key")


def _secret_bytes(secret: SecretStr) -> bytes:
    raw = secret.get_secret_value().encode()
    if len(raw) < _MIN_SECRET_BYTES:
        raise ValidationError(
            f"DUET_CUSTOMER_TOKEN_SECRET must be at least {_MIN_SECRET_BYTES} bytes")
    return raw


class CustomerTokens:
    """Verifies (and, with signing material, mints) customer tokens."""

    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.customer_token_issuer
        self.audience = settings.customer_token_audience
        self.leeway_s = settings.customer_token_leeway_s
        self.max_groups = settings.customer_token_max_groups
        self._secret: bytes | None = None
        #: verification key by the one algorithm it is accepted with.
        self._keys: dict[str, Any] = {}
        if settings.customer_token_secret is not None:
            self._secret = _secret_bytes(settings.customer_token_secret)
            self._keys["HS256"] = self._secret
        if settings.customer_token_public_key is not None:
            path = settings.customer_token_public_key
            try:
                key = load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ValidationError(
                    f"DUET_CUSTOMER_TOKEN_PUBLIC_KEY {path}: not a readable PEM public key"
                ) from exc
            self._keys[_asymmetric_algorithm(key)] = key

    @property
    def configured(self) -> bool:
        """Whether any verification key is set (else every presented token is refused)."""
        return bool(self._keys)

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms accepted, one per configured key."""
        return tuple(self._keys)

    def verify(self, token: str | None) -> Identity:
        """The identity a token proves; None is an anonymous customer.

        Raises :class:`UnauthorizedError` for anything else that does not verify.
        """
        if token is None:
            return Identity.anonymous_customer()
        try:
            return self._verify(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            log.debug("customer token refused", extra={"reason": str(exc)[:200]})
            raise UnauthorizedError(_REJECTED) from None

    def _verify(self, token: str) -> Identity:
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise ValueError("empty or oversized token")
        alg = jwt.get_unverified_header(token).get("alg")
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None:
            raise ValueError(f"algorithm {alg!r} not accepted (configured: {self.algorithms})")
        claims = jwt.decode(
            token, key, algorithms=[alg], issuer=self.issuer, audience=self.audience,
            leeway=self.leeway_s, options={"require": ["exp", "sub"]},
        )
        sub = claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= _MAX_SUB_CHARS:
            raise ValueError("bad sub")
        groups = claims.get("groups", [])
        if not isinstance(groups, list) or len(groups) > self.max_groups or not all(
                isinstance(g, str) and 0 < len(g) <= _MAX_GROUP_CHARS for g in groups):
            raise ValueError("bad groups")
        return Identity(customer_id=sub, groups=tuple(groups), anonymous=False)

    def mint(self, sub: str, groups: Sequence[str] = (), ttl_s: float = 3600, *,
             private_key: bytes | None = None) -> str:
        """A signed token (for the CLI and tests; in production the company backend signs).

        ``private_key``: a PEM RSA/EC private key (RS256/ES256); else the HS256 secret.
        """
        if not sub or len(sub) > _MAX_SUB_CHARS:
            raise ValidationError(f"sub must be 1..{_MAX_SUB_CHARS} characters")
        if len(groups) > self.max_groups or not all(
                0 < len(g) <= _MAX_GROUP_CHARS for g in groups):
            raise ValidationError(
                f"at most {self.max_groups} groups of 1..{_MAX_GROUP_CHARS} characters")
        if ttl_s <= 0:
            raise ValidationError("ttl must be positive")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "groups": list(groups), "iat": now,
                                  "exp": now + int(ttl_s)}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        if private_key is not None:
            try:
                key = load_pem_private_key(private_key, password=None)
            except (ValueError, TypeError) as exc:
                raise ValidationError("not an unencrypted PEM private key") from exc
            return jwt.encode(claims, key, algorithm=_asymmetric_algorithm(key))  # type: ignore[arg-type]
        if self._secret is None:
            raise ValidationError(
                "no signing material: set DUET_CUSTOMER_TOKEN_SECRET or pass a private key")
        return jwt.encode(claims, self._secret, algorithm="HS256")


# --- operators --------------------------------------------------------------------------

def parse_operator_tokens(value: SecretStr | str | None, *, setting: str) -> dict[str, str]:
    """``name:token`` pairs from a comma list, or from a file with one pair a line.

    A value naming an existing file (or starting with ``/``, ``./`` or ``~``) is a file;
    ``#`` starts a comment line there. Tokens shorter than 16 characters are refused.
    """
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if raw is None or not raw.strip():
        return {}
    raw = raw.strip()
    path = Path(raw).expanduser()
    if raw.startswith(("/", "./", "~")) or ("," not in raw and ":" not in raw) or path.is_file():
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValidationError(
                f"{setting}: neither `name:token,...` nor a readable token file") from exc
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        entries = [e.strip() for e in raw.split(",") if e.strip()]
    tokens: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ValidationError(f"{setting}: entry {number} is not `name:token`")
        if len(token) < _MIN_OPERATOR_TOKEN_CHARS:
            raise ValidationError(
                f"{setting}: the token of {name!r} is under {_MIN_OPERATOR_TOKEN_CHARS} characters")
        if name in tokens:
            raise ValidationError(f"{setting}: operator {name!r} is listed twice")
        tokens[name] = token
    return tokens


def is_loopback_client(conn: HTTPConnection) -> bool:
    """A direct caller on 127.0.0.0/8 or ::1; one that came through a proxy is not."""
    if any(name in _PROXY_HEADERS for name, _ in conn.scope.get("headers", ())):
        return False
    if conn.client is None:
        return False
    try:
        address = ipaddress.ip_address(conn.client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _presented_token(conn: HTTPConnection) -> str | None:
    scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return conn.query_params.get("token") or None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class OperatorAuth:
    """Checks operator bearer tokens per scope (``api``, ``supervisor``)."""

    def __init__(self, settings: Settings) -> None:
        self._tokens: dict[str, list[tuple[str, bytes]]] = {
            scope: [(name, _digest(token)) for name, token in parse_operator_tokens(
                value, setting=setting).items()]
            for scope, value, setting in (
                ("api", settings.api_tokens, "DUET_API_TOKENS"),
                ("supervisor", settings.supervisor_tokens, "DUET_SUPERVISOR_TOKENS"),
            )
        }

    def configured(self, scope: OperatorScope) -> bool:
        """Whether tokens are set for ``scope`` (else loopback callers only)."""
        return bool(self._tokens[scope])

    def check(self, conn: HTTPConnection, scope: OperatorScope) -> str:
        """The operator's name, or :class:`UnauthorizedError`.

        Without tokens for the scope, a loopback caller is the operator ``"loopback"``.
        """
        known = self._tokens[scope]
        if not known:
            if is_loopback_client(conn):
                return "loopback"
            log.debug("operator refused: not loopback", extra={"scope": scope})
            raise UnauthorizedError(_OPERATOR_REQUIRED)
        presented = _presented_token(conn)
        if presented is not None and len(presented) <= _MAX_TOKEN_CHARS:
            given = _digest(presented)
            match = None
            for name, digest in known:  # every entry compared: the time says nothing
                if hmac.compare_digest(given, digest):
                    match = name
            if match is not None:
                return match
        log.debug("operator refused: no valid token", extra={"scope": scope})
        raise UnauthorizedError(_OPERATOR_REQUIRED)

    def check_any(self, conn: HTTPConnection, *scopes: OperatorScope) -> str:
        """The operator's name under the first scope that admits the caller.

        When any of ``scopes`` has tokens, the loopback rule of the others does not apply:
        with operator tokens configured, every caller needs one.
        """
        configured = [scope for scope in scopes if self._tokens[scope]]
        for scope in configured or scopes:
            try:
                return self.check(conn, scope)
            except UnauthorizedError:
                continue
        raise UnauthorizedError(_OPERATOR_REQUIRED)

    def identify(self, conn: HTTPConnection,
                 scopes: Sequence[OperatorScope] = ("api", "supervisor")) -> str | None:
        """The operator's name, or None for anyone else (no exception)."""
        try:
            return self.check_any(conn, *scopes)
        except UnauthorizedError:
            return None


# --- wiring into the app ----------------------------------------------------------------

_OPERATORS_KEY = "duet.operators"
_CUSTOMERS_KEY = "duet.customers"


class _AccessContext:
    """Puts the app's :class:`OperatorAuth` and :class:`CustomerTokens` into the scope."""

    def __init__(self, app: ASGIApp, operators: OperatorAuth, customers: CustomerTokens) -> None:
        self.app = app
        self.operators = operators
        self.customers = customers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[_OPERATORS_KEY] = self.operators
            scope[_CUSTOMERS_KEY] = self.customers
        await self.app(scope, receive, send)


def operators_for(conn: HTTPConnection) -> OperatorAuth:
    """The app's operator check (from :func:`security_middleware`, else built from settings)."""
    found = conn.scope.get(_OPERATORS_KEY)
    if found is None:
        state = conn.app.state
        found = getattr(state, "_duet_operators", None)
        if found is None:
            found = OperatorAuth(state.duet.settings)
            state._duet_operators = found
    return found


def customers_for(conn: HTTPConnection) -> CustomerTokens:
    """The app's customer-token verifier (from :func:`security_middleware`, else built)."""
    found = conn.scope.get(_CUSTOMERS_KEY)
    if found is None:
        state = conn.app.state
        found = getattr(state, "_duet_customers", None)
        if found is None:
            found = CustomerTokens(state.duet.settings)
            state._duet_customers = found
    return found


C = TypeVar("C", bound=HTTPConnection)
R = TypeVar("R")


def require_operator(*scopes: OperatorScope
                     ) -> Callable[[Callable[[C], Awaitable[R]]], Callable[[C], Awaitable[R]]]:
    """Guard a Starlette endpoint (HTTP or websocket): an operator of any of ``scopes``.

    The operator's name is left in ``conn.scope["duet.operator"]``.
    """
    if not scopes:
        raise ValueError("name at least one scope")

    def wrap(endpoint: Callable[[C], Awaitable[R]]) -> Callable[[C], Awaitable[R]]:
        @functools.wraps(endpoint)
        async def guarded(conn: C) -> R:
            conn.scope["duet.operator"] = operators_for(conn).check_any(conn, *scopes)
            return await endpoint(conn)

        return guarded

    return wrap


def security_middleware(settings: Settings) -> list[Middleware]:
    """The gateway's access middleware, outermost first.

    Host check (DNS rebinding) → Origin check (websocket upgrades and CORS) → CORS answers
    for allowed origins (only when ``DUET_ALLOWED_ORIGINS`` is set) → the access context
    (operator and customer-token checkers, built here so bad settings fail at start) →
    the body-size limit. Every refusal is the JSON error shape.
    """
    operators = OperatorAuth(settings)
    customers = CustomerTokens(settings)
    origins = allowed_origins(settings.allowed_origins)
    stack = [
        Middleware(HostGuard, allowed=allowed_hosts(settings.allowed_hosts, settings.host)),
        Middleware(OriginGuard, allowed=origins),
    ]
    if origins:
        stack.append(Middleware(
            CORSMiddleware, allow_origins=browser_origins(origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"], max_age=600))
    stack += [
        Middleware(_AccessContext, operators=operators, customers=customers),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
    ]
    return stack
