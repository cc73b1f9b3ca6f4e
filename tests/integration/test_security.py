"""Identity and access (PROTOCOL §0) against the real gateway, NATS and Chroma.

Non-loopback callers are real: the test builds a network namespace joined to this one by
a veth pair (10.211.N.1/30 here, 10.211.N.2/30 there) and sends requests from inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from core.natsd import EmbeddedNats
from core.settings import Settings
from tests.conftest import Gateway, make_settings, run_gateway

pytestmark = pytest.mark.integration

API_TOKEN = "api-0123456789abcdef0123"
SUP_TOKEN = "sup-0123456789abcdef0123"
SECRET_TEXT = "The vault combination is 31-7-42"
DOC = {
    "event_type": "CREATE", "doc_id": "staff-only", "version": 1,
    "content": f"# Staff handbook\n\n{SECRET_TEXT}; it opens the back office safe for staff.",
    "metadata": {"title": "Staff handbook", "acl": ["staff"], "source": "cms"},
}
PROXY_HEADERS = [{"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "127.0.0.1"},
                 {"Forwarded": "for=127.0.0.1"}, {"X-Real-IP": "127.0.0.1"}]


def assert_refusal(res: httpx.Response | dict[str, Any], status: int, code: str) -> None:
    """The one error shape, and nothing that should not leave the gateway."""
    if isinstance(res, httpx.Response):
        assert res.status_code == status, res.text
        assert res.headers["content-type"].startswith("application/json")
        text, body = res.text, res.json()
    else:
        assert res["status"] == status, res
        text, body = res["body"], json.loads(res["body"])
    assert set(body) >= {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    for leak in ("Traceback", 'File "', SECRET_TEXT, "nats://", "staff-only exists"):
        assert leak not in text, text


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as c:
        yield c


@contextlib.asynccontextmanager
async def gateway_with(tmp_path: Path, nats_url: str, **overrides: Any
                       ) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with run_gateway(make_settings(tmp_path, nats_url, **overrides)) as gw, \
            httpx.AsyncClient(base_url=gw.base_url, timeout=30) as c:
        yield gw, c


# --- loopback gateway without tokens (the test default) ---------------------------------

async def test_loopback_operator_needs_no_token(client: httpx.AsyncClient) -> None:
    res = await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
    assert res.status_code == 200 and res.json()["outcome"] == "applied"
    assert (await client.get("/v1/documents/staff-only")).json()["tier"] == "hot"
    assert (await client.get("/metrics")).status_code == 200
    health = (await client.get("/healthz")).json()
    url = health["dependencies"]["nats"]["url"]
    assert url.startswith("nats://127.0.0.1:") and "@" not in url


@pytest.mark.parametrize("headers", PROXY_HEADERS)
async def test_a_proxied_request_is_not_loopback(client: httpx.AsyncClient,
                                                 headers: dict[str, str]) -> None:
    assert_refusal(await client.post("/v1/documents", json=DOC, headers=headers),
                   401, "unauthorized")
    assert_refusal(await client.get("/metrics", headers=headers), 401, "unauthorized")
    assert (await client.get("/healthz", headers=headers)).json() == {"status": "ok"}


async def test_document_reads_reveal_nothing_to_customers(
        client: httpx.AsyncClient, gateway: Gateway) -> None:
    await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
    outsider = {"X-Forwarded-For": "203.0.113.7"}
    known = await client.get("/v1/documents/staff-only", headers=outsider)
    unknown = await client.get("/v1/documents/no-such-doc", headers=outsider)
    assert_refusal(known, 401, "unauthorized")
    assert known.content == unknown.content  # no whether-it-exists
    invalid = await client.get("/v1/documents/bad%20id", headers=outsider)
    assert_refusal(invalid, 401, "unauthorized")
    # the operator's own refusals have the same shape
    assert_refusal(await client.get("/v1/documents/no-such-doc"), 404, "not_found")


async def test_dns_rebinding_host_is_refused(client: httpx.AsyncClient, gateway: Gateway) -> None:
    for path in ("/healthz", "/v1/documents/staff-only", "/metrics"):
        assert_refusal(await client.get(path, headers={"Host": "evil.example"}), 403, "forbidden")
    assert_refusal(await client.post("/v1/documents", json=DOC, headers={"Host": "evil.example"}),
                   403, "forbidden")
    port = gateway.base_url.rsplit(":", 1)[1]
    assert (await client.get("/healthz", headers={"Host": f"localhost:{port}"})).status_code == 200
    # a websocket upgrade (the websockets client always sends its own Host, so by hand)
    upgrade = {"Host": "evil.example", "Connection": "Upgrade", "Upgrade": "websocket",
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert_refusal(await client.get("/v1/chat", headers=upgrade), 403, "forbidden")


async def test_foreign_origins_are_refused(client: httpx.AsyncClient, gateway: Gateway) -> None:
    evil = {"Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{gateway.ws_url}/v1/chat", origin="https://evil.example"):
            pass
    assert info.value.response.status_code == 403
    body = json.loads(info.value.response.body)
    assert body == {"error": {"code": "forbidden", "message": "Origin not allowed"}}
    for origin in ("null", "http://127.0.0.1:1"):
        with pytest.raises(InvalidStatus):
            async with websockets.connect(f"{gateway.ws_url}/v1/chat", origin=origin):
                pass
    # the gateway's own origin, and a non-browser client without Origin, are welcome
    async with websockets.connect(f"{gateway.ws_url}/v1/chat", origin=gateway.base_url) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await ws.recv())["type"] == "session"
    async with websockets.connect(f"{gateway.ws_url}/v1/chat") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await ws.recv())["type"] == "session"
    # CORS: a simple cross-site POST and a preflight are refused before any handler runs
    assert_refusal(await client.post("/v1/documents", json=DOC, headers=evil), 403, "forbidden")
    preflight = await client.options("/v1/documents", headers={
        **evil, "Access-Control-Request-Method": "POST"})
    assert_refusal(preflight, 403, "forbidden")
    assert "access-control-allow-origin" not in preflight.headers
    info_ = await gateway.state.runtime.nc.jetstream().stream_info("DUET_DOCS")
    assert info_.state.messages == 0


async def test_configured_origins_get_cors_answers(tmp_path: Path,
                                                   nats_server: EmbeddedNats) -> None:
    app_origin = "https://app.example"
    async with gateway_with(tmp_path, nats_server.url, allowed_origins=app_origin) as (gw, c):
        preflight = await c.options("/v1/documents", headers={
            "Origin": app_origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == app_origin
        res = await c.get("/healthz", headers={"Origin": app_origin})
        assert res.headers["access-control-allow-origin"] == app_origin
        assert_refusal(await c.get("/healthz", headers={"Origin": "https://evil.example"}),
                       403, "forbidden")
        async with websockets.connect(f"{gw.ws_url}/v1/chat", origin=app_origin):
            pass


async def test_content_type_games_are_415(client: httpx.AsyncClient) -> None:
    body = json.dumps(DOC).encode()
    for content_type in ("text/plain; charset=json", "application/jsonx", "text/json",
                         "application/x-www-form-urlencoded", "application/json; charset=utf-16",
                         None):
        headers = {"Content-Type": content_type} if content_type else {}
        assert_refusal(await client.post("/v1/documents", content=body, headers=headers),
                       415, "unsupported_media_type")
    res = await client.post("/v1/documents", content=body,
                            headers={"Content-Type": "application/json; charset=utf-8"})
    assert res.status_code == 202


async def test_sizes_count_utf8_bytes(client: httpx.AsyncClient, gateway: Gateway) -> None:
    doc = {**DOC, "content": "é" * 300_000}  # 300k characters, 600k bytes: over 512 KiB
    res = await client.post("/v1/documents", json=doc)
    assert_refusal(res, 413, "too_large")
    assert "é" not in res.text
    info = await gateway.state.runtime.nc.jetstream().stream_info("DUET_DOCS")
    assert info.state.messages == 0


async def test_whole_message_over_the_nats_limit_is_413(tmp_path: Path,
                                                        nats_server: EmbeddedNats) -> None:
    # content within its own limit, but metadata makes the message larger than the
    # stream takes: a 413 that names the limit, not a 500 or a 503
    async with gateway_with(tmp_path, nats_server.url, max_content_bytes=200_000,
                            max_body_bytes=2 * 1024 * 1024) as (_, c):
        # over the stream's max_msg_size (content limit + 64 KiB), then over max_payload
        for notes in (100_000, 900_000):
            doc = {**DOC, "content": "a" * 190_000,
                   "metadata": {**DOC["metadata"], "notes": "b" * notes}}
            res = await c.post("/v1/documents", json=doc)
            assert_refusal(res, 413, "too_large")
            assert "limit" in res.json()["error"]["message"]


@pytest.mark.parametrize("version", ["1" + "0" * 400, str(2**53 + 1), "-1", "1e400"])
async def test_huge_versions_are_refused_at_validation(
        client: httpx.AsyncClient, gateway: Gateway, version: str) -> None:
    body = '{"event_type": "DELETE", "doc_id": "staff-only", "version": ' + version + "}"
    res = await client.post("/v1/documents", content=body,
                            headers={"Content-Type": "application/json"})
    assert_refusal(res, 422, "invalid")
    assert "version" in res.json()["error"]["message"]
    info = await gateway.state.runtime.nc.jetstream().stream_info("DUET_DOCS")
    assert info.state.messages == 0


async def test_empty_acl_waits_and_is_never_public(client: httpx.AsyncClient,
                                                    gateway: Gateway) -> None:
    doc = {**DOC, "doc_id": "no-one", "metadata": {**DOC["metadata"], "acl": []}}
    res = await client.post("/v1/documents", params={"wait": "true"}, json=doc)
    assert res.status_code == 202 and res.json()["outcome"] == "pending_acl"
    assert (await client.get("/v1/documents/no-one")).json()["tier"] == "pending_acl"
    hits = (await gateway.state.runtime.kb.search("vault combination back office safe")).hits
    assert all(h.doc_id != "no-one" for h in hits)


async def test_wait_outcomes(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/documents", params={"wait": "true"}, json=DOC)).status_code == 200
    again = await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    newer = {**DOC, "version": 3, "content": DOC["content"] + " Updated."}
    assert (await client.post("/v1/documents", params={"wait": "true"}, json=newer)).status_code == 200
    stale = await client.post("/v1/documents", params={"wait": "true"},
                              json={**DOC, "version": 2, "content": "# Old\n\n" + "words " * 20})
    assert_refusal(stale, 409, "stale")
    assert stale.json()["outcome"] == "stale"
    short = await client.post("/v1/documents", params={"wait": "true"},
                              json={**DOC, "doc_id": "tiny", "content": "too short"})
    assert_refusal(short, 422, "quarantined")
    assert "too short" in short.json()["reason"]


async def test_a_wait_that_runs_out_is_504(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    # no worker: the outcome never comes
    async with gateway_with(tmp_path, nats_server.url, run_worker=False,
                            wait_timeout_s=0.5) as (_, c):
        assert_refusal(await c.post("/v1/documents", params={"wait": "true"}, json=DOC),
                       504, "timeout")


async def test_nats_down_is_503_with_retry_after(client: httpx.AsyncClient, gateway: Gateway,
                                                 nats_server: EmbeddedNats) -> None:
    nc = gateway.state.runtime.nc
    nats_server.stop()
    for _ in range(200):  # the client notices the closed socket at once; allow a slow CI
        if not nc.is_connected:
            break
        await asyncio.sleep(0.05)
    assert not nc.is_connected
    for res in (await client.post("/v1/documents", json=DOC),
                await client.post("/v1/documents", params={"wait": "true"}, json=DOC),
                await client.get("/v1/documents/staff-only")):
        assert_refusal(res, 503, "dependency")
        assert res.headers["retry-after"].isdigit()
    health = await client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"})
    assert health.status_code == 503 and health.json() == {"status": "degraded"}


async def test_unknown_routes_and_methods_have_the_error_shape(client: httpx.AsyncClient) -> None:
    assert_refusal(await client.get("/nope"), 404, "not_found")
    assert_refusal(await client.delete("/v1/documents"), 405, "method_not_allowed")
    assert_refusal(await client.post("/v1/documents", content=b"{not json",
                                     headers={"Content-Type": "application/json"}),
                   422, "invalid")


# --- tokens configured -------------------------------------------------------------------

async def test_with_tokens_loopback_needs_one_too(tmp_path: Path,
                                                  nats_server: EmbeddedNats) -> None:
    async with gateway_with(tmp_path, nats_server.url, api_tokens=f"ci:{API_TOKEN}",
                            supervisor_tokens=f"ops:{SUP_TOKEN}") as (_, c):
        assert_refusal(await c.post("/v1/documents", json=DOC), 401, "unauthorized")
        wrong = await c.post("/v1/documents", json=DOC,
                             headers={"Authorization": f"Bearer {API_TOKEN}x"})
        assert_refusal(wrong, 401, "unauthorized")
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert_refusal(await c.post("/v1/documents", json=DOC,
                                    headers={"Authorization": f"Bearer {SUP_TOKEN}"}),
                       401, "unauthorized")  # a supervisor token is no api token
        ok = await c.post("/v1/documents", json=DOC,
                          headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert ok.status_code == 202
        assert (await c.get("/v1/documents/staff-only", params={"token": API_TOKEN})
                ).status_code in (200, 404)
        assert_refusal(await c.get("/metrics"), 401, "unauthorized")
        assert (await c.get("/metrics", params={"token": SUP_TOKEN})).status_code == 200
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        detailed = (await c.get("/healthz", headers={"Authorization": f"Bearer {API_TOKEN}"})
                    ).json()
        assert "@" not in detailed["dependencies"]["nats"]["url"]


async def test_embedded_nats_refuses_connections_without_its_password(
        nats_server: EmbeddedNats) -> None:
    assert "@" in nats_server.url and nats_server.password in nats_server.url
    with pytest.raises(nats.errors.Error) as info:
        await nats.connect(nats_server.public_url, allow_reconnect=False, connect_timeout=5,
                           max_reconnect_attempts=0)
    assert "authorization" in str(info.value).lower()
    with pytest.raises(nats.errors.Error):
        await nats.connect(nats_server.url.replace(nats_server.password, "guess"),
                           allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0)
    config = nats_server.store_dir / "auth.conf"
    assert config.stat().st_mode & 0o777 == 0o600
    proc = await asyncio.create_subprocess_exec("ps", "-eo", "args",
                                                stdout=asyncio.subprocess.PIPE)
    ps, _ = await proc.communicate()
    assert nats_server.password not in ps.decode()


# --- a caller on another host: a network namespace ----------------------------------------

_PROBE = r"""
import json, sys, urllib.request, urllib.error
method, url, body, headers = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
req = urllib.request.Request(url, data=body.encode() or None, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=20) as res:
        print(json.dumps({"status": res.status, "body": res.read().decode()}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": exc.read().decode()}))
"""


class Netns:
    """A namespace ``name`` with address ``peer``, reaching this host at ``local``."""

    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.name = f"duet-sec-{os.getpid()}"
        self.host_if, self.peer_if = f"dsh{os.getpid() % 100000}", f"dsp{os.getpid() % 100000}"
        self.local, self.peer = f"10.211.{n}.1", f"10.211.{n}.2"

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def up(self) -> None:
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        self._ip("link", "set", self.peer_if, "netns", self.name)
        self._ip("addr", "add", f"{self.local}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        self._ip("-n", self.name, "addr", "add", f"{self.peer}/30", "dev", self.peer_if)
        self._ip("-n", self.name, "link", "set", self.peer_if, "up")
        self._ip("-n", self.name, "link", "set", "lo", "up")

    def down(self) -> None:
        for args in (("link", "del", self.host_if), ("netns", "del", self.name)):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._ip(*args)

    async def request(self, method: str, url: str, body: dict | None = None,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
        hdrs = {"Content-Type": "application/json", **(headers or {})} if body else (headers or {})
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.name, sys.executable, "-c", _PROBE, method, url,
            json.dumps(body) if body else "", json.dumps(hdrs),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return json.loads(out)


@pytest.fixture
def netns() -> Any:
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command: cannot build a network namespace")
    ns = Netns()
    try:
        ns.up()
    except subprocess.CalledProcessError as exc:
        ns.down()
        pytest.skip(f"network namespaces not permitted here: {exc.stderr.decode().strip()}")
    try:
        yield ns
    finally:
        ns.down()


@contextlib.asynccontextmanager
async def serve_on(settings: Settings, host: str) -> AsyncIterator[tuple[Any, int]]:
    """The gateway on ``host`` (run_gateway binds loopback only)."""
    import uvicorn

    from gateway.app import create_app, server_options

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning",
                                           **server_options(settings)))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway stopped during start-up")
        await asyncio.sleep(0.02)
    try:
        yield app, server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def test_other_hosts_need_a_token(tmp_path: Path, nats_server: EmbeddedNats,
                                        netns: Netns) -> None:
    settings = make_settings(tmp_path, nats_server.url, host="0.0.0.0",
                             allowed_hosts=f"127.0.0.1,{netns.local}")
    async with serve_on(settings, "0.0.0.0") as (_, port):
        remote = f"http://{netns.local}:{port}"
        # from the namespace: a real non-loopback client address
        assert_refusal(await netns.request("POST", f"{remote}/v1/documents", DOC), 401,
                       "unauthorized")
        assert_refusal(await netns.request("GET", f"{remote}/v1/documents/staff-only"), 401,
                       "unauthorized")
        assert_refusal(await netns.request("GET", f"{remote}/metrics"), 401, "unauthorized")
        health = await netns.request("GET", f"{remote}/healthz")
        assert health["status"] == 200 and json.loads(health["body"]) == {"status": "ok"}
        # the same gateway from loopback: an operator without a token
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert (await c.post("/v1/documents", json=DOC)).status_code == 202


async def test_other_hosts_with_a_token(tmp_path: Path, nats_server: EmbeddedNats,
                                        netns: Netns) -> None:
    settings = make_settings(tmp_path, nats_server.url, host=netns.local,
                             api_tokens=f"ci:{API_TOKEN}")
    async with serve_on(settings, netns.local) as (_, port):
        remote = f"http://{netns.local}:{port}"
        ok = await netns.request("POST", f"{remote}/v1/documents", DOC,
                                 {"Authorization": f"Bearer {API_TOKEN}"})
        assert ok["status"] == 202, ok
        assert_refusal(await netns.request("POST", f"{remote}/v1/documents", DOC,
                                           {"Authorization": "Bearer nope-nope-nope-nope"}),
                       401, "unauthorized")
        assert_refusal(await netns.request("GET", f"{remote}/healthz",
                                           headers={"Host": "evil.example"}), 403, "forbidden")
