"""Customer tokens, operator tokens, Host/Origin rules and the error mapping, in-process."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import jwt
import pydantic
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import HTTPConnection

from core.errors import (
    ConflictError,
    DependencyError,
    DuetError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    TimeoutError_,
    UnauthorizedError,
    UnsupportedMediaError,
    ValidationError,
)
from core.natsd import redact_url, write_private
from core.settings import Settings
from gateway.auth import CustomerTokens, Identity, OperatorAuth, parse_operator_tokens
from gateway.documents import json_media_type
from gateway.errors import status_for
from gateway.origins import HostGuard, OriginGuard, allowed_hosts, allowed_origins
from ingest.events import MAX_VERSION, DocumentEvent

pytestmark = pytest.mark.unit

SECRET = "s" * 64
OTHER_SECRET = "o" * 64
API_TOKEN = "api-token-0123456789abcdef"
SUP_TOKEN = "sup-token-0123456789abcdef"


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rsa_tokens(tmp_path: Path, rsa_key) -> CustomerTokens:
    path = tmp_path / "customer.pub.pem"
    path.write_bytes(_pem_public(rsa_key))
    return CustomerTokens(settings(customer_token_public_key=path))


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# --- Identity ---------------------------------------------------------------------------

def test_identity_always_has_public() -> None:
    assert Identity.anonymous_customer() == Identity(None, ("public",), True)
    channel = Identity.for_channel("whatsapp:+15551234", groups=("staff",))
    assert channel.groups == ("public", "staff") and not channel.anonymous
    assert Identity("x", ("a", "public", "a"), False).groups == ("public", "a")
    with pytest.raises(ValueError):
        Identity.for_channel("")


# --- customer tokens --------------------------------------------------------------------

def test_hs256_round_trip_and_no_token_is_anonymous() -> None:
    tokens = CustomerTokens(settings(customer_token_secret=SECRET))
    who = tokens.verify(tokens.mint("alice", ["staff", "beta"], ttl_s=60))
    assert who == Identity("alice", ("public", "staff", "beta"), anonymous=False)
    assert tokens.verify(None) == Identity.anonymous_customer()


def _refused(tokens: CustomerTokens, token: str) -> str:
    with pytest.raises(UnauthorizedError) as info:
        tokens.verify(token)
    assert info.value.code == "unauthorized"
    return info.value.message


@pytest.mark.parametrize("claims", [
    {"sub": "alice", "exp": int(time.time()) - 3600},                 # expired
    {"sub": "alice"},                                                  # no exp
    {"groups": ["staff"], "exp": int(time.time()) + 60},              # no sub
    {"sub": "", "exp": int(time.time()) + 60},                         # empty sub
    {"sub": "alice", "groups": "staff", "exp": int(time.time()) + 60},  # groups not a list
    {"sub": "alice", "groups": [1], "exp": int(time.time()) + 60},
    {"sub": "alice", "groups": ["g"] * 65, "exp": int(time.time()) + 60},  # too many
    {"sub": "alice", "groups": ["x" * 101], "exp": int(time.time()) + 60},
    {"sub": "alice", "exp": int(time.time()) + 60, "nbf": int(time.time()) + 3600},
])
def test_bad_claims_are_refused_with_one_message(claims: dict) -> None:
    tokens = CustomerTokens(settings(customer_token_secret=SECRET))
    message = _refused(tokens, jwt.encode(claims, SECRET, algorithm="HS256"))
    assert message == "invalid customer token"


def test_forged_and_foreign_tokens_are_refused() -> None:
    tokens = CustomerTokens(settings(customer_token_secret=SECRET))
    good = tokens.mint("alice", ["staff"], ttl_s=60)
    header, payload, signature = good.split(".")
    # a payload edited to add a group, with the original signature
    forged = ".".join([header, _b64({"sub": "alice", "groups": ["admin"],
                                     "exp": int(time.time()) + 60}), signature])
    _refused(tokens, forged)
    _refused(tokens, jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, OTHER_SECRET,
                                algorithm="HS256"))
    # alg none, in its usual spellings
    for alg in ("none", "None", "NONE"):
        unsigned = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64({'sub': 'a', 'exp': 2**40})}."
        _refused(tokens, unsigned)
    # HS512 with the right secret: the algorithm is pinned
    _refused(tokens, jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET,
                                algorithm="HS512"))
    for garbage in ("", "x", "a.b.c", "x" * 10_000, good + "x"):
        _refused(tokens, garbage)


def test_no_verification_key_refuses_every_token() -> None:
    tokens = CustomerTokens(settings())
    assert not tokens.configured
    _refused(tokens, jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, SECRET,
                                algorithm="HS256"))
    assert tokens.verify(None).anonymous


def test_rs256_public_key(rsa_tokens: CustomerTokens, rsa_key) -> None:
    assert rsa_tokens.algorithms == ("RS256",)
    token = rsa_tokens.mint("bob", ["vip"], ttl_s=60, private_key=_pem_private(rsa_key))
    assert rsa_tokens.verify(token) == Identity("bob", ("public", "vip"), False)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _refused(rsa_tokens, jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, other,
                                    algorithm="RS256"))


def test_hs_token_to_an_rs_gateway_is_refused(rsa_tokens: CustomerTokens, rsa_key) -> None:
    claims = {"sub": "mallory", "groups": ["admin"], "exp": int(time.time()) + 60}
    _refused(rsa_tokens, jwt.encode(claims, SECRET, algorithm="HS256"))
    # the classic confusion: HMAC keyed with the (public) PEM text of the RSA key
    public_pem = _pem_public(rsa_key)
    forged = ".".join([_b64({"alg": "HS256", "typ": "JWT"}), _b64(claims)])
    import hashlib
    import hmac
    sig = base64.urlsafe_b64encode(
        hmac.new(public_pem, forged.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    _refused(rsa_tokens, f"{forged}.{sig}")


def test_es256_public_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(_pem_public(key))
    tokens = CustomerTokens(settings(customer_token_public_key=path))
    assert tokens.algorithms == ("ES256",)
    assert tokens.verify(tokens.mint("eve", [], private_key=_pem_private(key))).customer_id == "eve"


def test_issuer_and_audience_are_checked_when_set() -> None:
    tokens = CustomerTokens(settings(customer_token_secret=SECRET, customer_token_issuer="acme",
                                     customer_token_audience="duet"))
    assert tokens.verify(tokens.mint("alice")).customer_id == "alice"
    exp = int(time.time()) + 60
    _refused(tokens, jwt.encode({"sub": "a", "exp": exp, "aud": "duet"}, SECRET, "HS256"))
    _refused(tokens, jwt.encode({"sub": "a", "exp": exp, "iss": "acme", "aud": "other"},
                                SECRET, "HS256"))


def test_signing_material_and_key_checks() -> None:
    with pytest.raises(ValidationError, match="no signing material"):
        CustomerTokens(settings()).mint("alice")
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        CustomerTokens(settings(customer_token_secret="short"))
    with pytest.raises(ValidationError, match="PEM"):
        CustomerTokens(settings(customer_token_public_key=Path("/nonexistent.pem")))


# --- operators --------------------------------------------------------------------------

def conn(host: str = "127.0.0.1", headers: dict[str, str] | None = None,
         query: str = "") -> HTTPConnection:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return HTTPConnection({"type": "http", "method": "GET", "path": "/", "headers": raw,
                           "client": (host, 50000), "query_string": query.encode()})


def test_operator_token_forms(tmp_path: Path) -> None:
    assert parse_operator_tokens(f"ci:{API_TOKEN}, ops:{SUP_TOKEN}", setting="X") == {
        "ci": API_TOKEN, "ops": SUP_TOKEN}
    file = tmp_path / "tokens"
    file.write_text(f"# operators\nci:{API_TOKEN}\n\nops:{SUP_TOKEN}\n")
    assert parse_operator_tokens(str(file), setting="X") == {"ci": API_TOKEN, "ops": SUP_TOKEN}
    for bad in ("ci:short", f"{API_TOKEN}", f"ci:{API_TOKEN},ci:{SUP_TOKEN}", ":x" * 20,
                "/no/such/file"):
        with pytest.raises(ValidationError):
            parse_operator_tokens(bad, setting="X")


def test_without_tokens_only_direct_loopback_callers() -> None:
    auth = OperatorAuth(settings())
    assert auth.check(conn("127.0.0.1"), "api") == "loopback"
    assert auth.check(conn("127.3.4.5"), "supervisor") == "loopback"
    assert auth.check(conn("::1"), "api") == "loopback"
    assert auth.check(conn("::ffff:127.0.0.1"), "api") == "loopback"
    for host in ("10.0.0.2", "192.168.1.10", "::ffff:10.0.0.2", "fe80::1", "not-an-ip"):
        with pytest.raises(UnauthorizedError):
            auth.check(conn(host), "api")
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        with pytest.raises(UnauthorizedError):
            auth.check(conn("127.0.0.1", {header: "127.0.0.1"}), "api")
    # a token presented to a gateway without tokens grants nothing more
    with pytest.raises(UnauthorizedError):
        auth.check(conn("10.0.0.2", {"Authorization": f"Bearer {API_TOKEN}"}), "api")


def test_with_tokens_everyone_needs_one() -> None:
    auth = OperatorAuth(settings(api_tokens=f"ci:{API_TOKEN}"))
    assert auth.configured("api") and not auth.configured("supervisor")
    with pytest.raises(UnauthorizedError):
        auth.check(conn("127.0.0.1"), "api")
    assert auth.check(conn("10.0.0.2", {"Authorization": f"Bearer {API_TOKEN}"}), "api") == "ci"
    assert auth.check(conn("10.0.0.2", {"authorization": f"bearer {API_TOKEN}"}), "api") == "ci"
    assert auth.check(conn("10.0.0.2", query=f"token={API_TOKEN}"), "api") == "ci"
    for wrong in (API_TOKEN[:-1], API_TOKEN + "x", SUP_TOKEN, ""):
        with pytest.raises(UnauthorizedError, match="operator token"):
            auth.check(conn("127.0.0.1", {"Authorization": f"Bearer {wrong}"}), "api")
    with pytest.raises(UnauthorizedError):
        auth.check(conn("127.0.0.1", {"Authorization": f"Basic {API_TOKEN}"}), "api")
    # scopes are separate: the api token is no supervisor token, and the loopback rule of
    # the token-less supervisor scope is no way around the api tokens
    assert auth.check(conn("127.0.0.1"), "supervisor") == "loopback"
    with pytest.raises(UnauthorizedError):
        auth.check_any(conn("127.0.0.1"), "api", "supervisor")
    assert auth.check_any(conn("10.0.0.2", query=f"token={API_TOKEN}"), "supervisor", "api") == "ci"
    assert auth.identify(conn("10.0.0.2")) is None


# --- Host and Origin --------------------------------------------------------------------

def test_allowed_hosts_defaults_and_patterns() -> None:
    assert allowed_hosts(None, "0.0.0.0") == ("127.0.0.1", "localhost", "::1")
    assert "support.example" in allowed_hosts(None, "support.example")
    guard = HostGuard(lambda *a: None, allowed_hosts("*.example.com, duet.local", "0.0.0.0"))
    assert guard.allows("a.example.com:8080") and guard.allows("DUET.LOCAL")
    assert not guard.allows("example.com") and not guard.allows("evil.example")
    local = HostGuard(lambda *a: None, allowed_hosts(None, "127.0.0.1"))
    assert local.allows("127.0.0.1:8080") and local.allows("[::1]:8080")
    assert local.allows("localhost") and not local.allows("evil.example:8080")
    assert not local.allows("") and not local.allows("127.0.0.1:x")


def test_origin_rules() -> None:
    own = OriginGuard(lambda *a: None, allowed_origins(None))
    assert own.allows("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert own.allows("https://support.example", "support.example")
    assert not own.allows("http://127.0.0.1:9999", "127.0.0.1:8080")
    assert not own.allows("https://evil.example", "127.0.0.1:8080")
    assert not own.allows("null", "127.0.0.1:8080")
    listed = OriginGuard(lambda *a: None, allowed_origins("https://app.example, http://x:81"))
    assert listed.allows("https://app.example:443", "gw.example")
    assert listed.allows("http://x:81", "gw.example")
    assert not listed.allows("http://app.example", "gw.example")
    with pytest.raises(ValidationError):
        allowed_origins("not an origin")
    with pytest.raises(ValidationError):
        allowed_hosts("example.com:http", "127.0.0.1")


# --- documents and errors ---------------------------------------------------------------

@pytest.mark.parametrize(("value", "ok"), [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("Application/JSON ; charset=\"UTF-8\"", True), ("text/plain; charset=json", False),
    ("application/jsonx", False), ("application/json; charset=latin-1", False),
    ("text/json", False), ("", False), (None, False), ("multipart/form-data; x=application/json", False),
])
def test_json_media_type(value: str | None, ok: bool) -> None:
    assert json_media_type(value) is ok


def test_status_mapping() -> None:
    class Custom(DuetError):
        code = "rate_limited"

    cases = {ValidationError("x"): 422, UnauthorizedError("x"): 401, ForbiddenError("x"): 403,
             NotFoundError("x"): 404, ConflictError("x"): 409, PayloadTooLargeError("x"): 413,
             UnsupportedMediaError("x"): 415, DependencyError("x"): 503, TimeoutError_("x"): 504,
             Custom("x"): 429}
    for exc, status in cases.items():
        assert status_for(exc) == status, exc


@pytest.mark.parametrize("version", ["-1", str(MAX_VERSION + 1), "1" + "0" * 400, "1e400"])
def test_versions_are_bounded(version: str) -> None:
    body = '{"event_type": "DELETE", "doc_id": "x", "version": ' + version + "}"
    with pytest.raises(pydantic.ValidationError):
        DocumentEvent.model_validate_json(body)


def test_largest_version_is_accepted() -> None:
    body = f'{{"event_type": "DELETE", "doc_id": "x", "version": {MAX_VERSION}}}'
    assert DocumentEvent.model_validate_json(body).version == MAX_VERSION


def test_private_files_and_redaction(tmp_path: Path) -> None:
    path = tmp_path / "nats.url"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "nats://duet:pw@127.0.0.1:1\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert redact_url("nats://duet:pw@127.0.0.1:1") == "nats://127.0.0.1:1"
    assert redact_url("nats://127.0.0.1:1") == "nats://127.0.0.1:1"
    assert redact_url(None) is None


# --- the catch-all and the CLI ----------------------------------------------------------

async def test_an_unexpected_failure_is_a_bare_500(caplog: pytest.LogCaptureFixture) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Route

    from gateway.errors import exception_handlers

    async def boom(request):
        raise RuntimeError("secret detail /etc/duet/tokens")

    app = Starlette(routes=[Route("/boom", boom)], exception_handlers=exception_handlers())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        res = await client.get("/boom")
    assert res.status_code == 500
    assert res.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert "secret detail" in caplog.text  # the stack goes to the log, not to the caller


def test_duet_token_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str], rsa_key) -> None:
    import duet_cli

    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in ("DUET_CUSTOMER_TOKEN_SECRET", "DUET_CUSTOMER_TOKEN_PUBLIC_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert duet_cli.main(["token", "--sub", "alice"]) == 2
    assert "no signing material" in capsys.readouterr().err

    monkeypatch.setenv("DUET_CUSTOMER_TOKEN_SECRET", SECRET)
    assert duet_cli.main(["token", "--sub", "alice", "--groups", "staff,beta", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    who = CustomerTokens(settings(customer_token_secret=SECRET)).verify(token)
    assert who == Identity("alice", ("public", "staff", "beta"), False)

    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(_pem_private(rsa_key))
    public = tmp_path / "public.pem"
    public.write_bytes(_pem_public(rsa_key))
    assert duet_cli.main(["token", "--sub", "bob", "--private-key", str(key_file)]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert CustomerTokens(settings(customer_token_public_key=public)).verify(token).customer_id == "bob"
    assert duet_cli.main(["token", "--sub", "bob", "--private-key", str(tmp_path / "nope")]) == 2


def test_require_operator_guards_a_websocket_before_accept() -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient, WebSocketDenialResponse

    from gateway.auth import require_operator, security_middleware
    from gateway.errors import exception_handlers

    @require_operator("supervisor")
    async def socket(ws) -> None:
        await ws.accept()
        await ws.send_json({"operator": ws.scope["duet.operator"]})
        await ws.close()

    config = settings(supervisor_tokens=f"ops:{SUP_TOKEN}", allowed_hosts="testserver")
    app = Starlette(routes=[WebSocketRoute("/sup", socket)],
                    middleware=security_middleware(config),
                    exception_handlers=exception_handlers())
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect("/sup"):
            pass
        assert info.value.status_code == 401
        assert info.value.json() == {"error": {"code": "unauthorized",
                                               "message": "a valid operator token is required"}}
        with client.websocket_connect(f"/sup?token={SUP_TOKEN}") as ws:
            assert ws.receive_json() == {"operator": "ops"}
        with client.websocket_connect(
                "/sup", headers={"Authorization": f"Bearer {SUP_TOKEN}"}) as ws:
            assert ws.receive_json() == {"operator": "ops"}
        with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect(
                f"/sup?token={SUP_TOKEN}", headers={"Origin": "https://evil.example"}):
            pass
        assert info.value.status_code == 403
