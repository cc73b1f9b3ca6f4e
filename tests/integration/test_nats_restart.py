"""The embedded nats-server is SIGKILLed under a running gateway: the supervisor starts it
again, and every consumer of the gateway resumes (real NATS, Chroma, gateway)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from core.errors import DependencyError
from core.natsd import EmbeddedNats, close_nats, connect
from gateway.escalations import EscalationQueue
from gateway.events import UserMessage
from gateway.store import INSTANCE_HEADER, SessionJournal
from ingest.events import DocumentEvent
from ingest.publisher import publish_event
from ingest.worker import ensure_stream
from tests.conftest import make_settings, run_gateway

pytestmark = pytest.mark.integration


async def _until(check, timeout_s: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def _doc(doc_id: str) -> dict:
    return {"event_type": "CREATE", "doc_id": doc_id, "version": 1,
            "content": f"# {doc_id}\n\nThis article explains how {doc_id} ships to customers.",
            "metadata": {"acl": ["public"]}}


async def test_supervisor_restarts_a_killed_server_on_the_same_port(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats", min_backoff_s=0.1) as server:
        nc = await connect(server.url, name="test")
        try:
            js = nc.jetstream()
            await js.add_stream(name="KEEP", subjects=["keep.>"])
            await js.publish("keep.a", b"before")
            first = server.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)

            async def back() -> bool:
                return server.pid not in (None, first) and server.state == "running"

            await _until(back, what="the server restarted")
            assert server.restarts == 1
            await _until(lambda: _true(nc.is_connected), what="the client reconnected")
            ack = await js.publish("keep.a", b"after")  # same store: the stream is there
            assert ack.seq == 2
        finally:
            await close_nats(nc)
    assert server.pid is None  # closed with its supervisor: not restarted again


async def _true(value: bool) -> bool:
    return value


async def test_every_consumer_resumes_after_the_server_is_killed(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats", min_backoff_s=3.0) as server:
        settings = make_settings(tmp_path, server.url, health_interval_s=0.2)
        async with run_gateway(settings) as gw, \
                httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
            runtime = gw.state.runtime
            sessions = gw.state.chat.sessions
            assert (await client.post("/v1/documents", params={"wait": "true"},
                                      json=_doc("before"))).status_code == 200
            # a session this process follows (the fan-out subscription of its log subject)
            opened = await client.post("/v1/chat", json={"text": "How do parcels ship?"})
            session = sessions.held(opened.json()["session_id"])
            assert session is not None
            await sessions.watch(session)
            os.kill(server.pid, signal.SIGKILL)

            # while it is down: 503 with Retry-After, never 500; health and readiness say so
            # (each polled on its own: a write in flight at the kill waits out its 5 s
            # publish timeout, longer than this outage)
            async def refused() -> bool:
                res = await client.post("/v1/documents", json=_doc("during"))
                assert res.status_code in (202, 503), res.text
                if res.status_code == 503:
                    assert res.headers["Retry-After"]
                    assert res.json()["error"]["message"] == (
                        "the document store is unavailable, retry shortly")
                return res.status_code == 503

            await asyncio.gather(
                _until(refused, what="a 503 from the document API while NATS is down"),
                _until(lambda: _status(client, "/healthz", 503), what="/healthz 503"),
                _until(lambda: _status(client, "/readyz", 503), what="/readyz 503"))
            # back: health, readiness and the ingest worker's pull subscription
            await _until(lambda: _status(client, "/healthz", 200), what="/healthz 200 again")
            await _until(lambda: _status(client, "/readyz", 200), what="/readyz 200 again")
            res = await client.post("/v1/documents", params={"wait": "true"},
                                    json=_doc("after"))
            assert res.status_code == 200 and res.json()["outcome"] == "applied"

            # the registry watches: a change written by another process arrives
            other = await connect(server.url, name="other-writer")
            try:
                later = datetime.now(UTC) + timedelta(days=1)
                kv = await other.jetstream().key_value(settings.registry_bucket)
                await kv.put("meta.as_of", later.isoformat().encode())

                async def as_of_seen() -> bool:
                    return runtime._as_of == later

                await _until(as_of_seen, timeout_s=8.0, what="the as-of watch resumed")
                # the session heartbeat: its bucket (in memory) was lost, and made again
                async def heartbeat_written() -> bool:
                    try:
                        gateways = await other.jetstream().key_value("DUET_SESSIONS_GATEWAYS")
                        return (await gateways.get(sessions.instance)).value == b"1"
                    except Exception:
                        return False

                await _until(heartbeat_written, what="the session heartbeat resumed")
                # the escalation watch: a conversation queued by another process arrives
                escalations = gw.state.chat.escalations
                elsewhere = await EscalationQueue.open(other.jetstream())
                await elsewhere.enqueue("after-restart", "human_request")

                async def queued_here() -> bool:
                    return escalations.get("after-restart") is not None

                await _until(queued_here, timeout_s=8.0, what="the escalation watch resumed")
                # supervisor presence: its bucket (in memory) was lost, and made again
                await escalations.announce("alice", "socket-1")
                assert "alice" in await escalations.online()
                # the session fan-out: an event another process appends reaches us
                queue = session.subscribe()
                foreign = UserMessage(text="from the other gateway").stamped(
                    session.id, session.seq + 1)
                await other.publish(SessionJournal.subject(session.id),
                                    json.dumps(foreign.wire()).encode(),
                                    headers={INSTANCE_HEADER: "another-gateway"})
                got = await asyncio.wait_for(queue.get(), 10)
                assert got.type == "user_message" and got.seq == foreign.seq
            finally:
                await close_nats(other)
            assert gw.state.runtime.tasks.healthy
            # and chat answers
            answer = await client.post("/v1/chat", json={"text": "How does after ship?"})
            assert answer.status_code == 200 and answer.json()["type"] == "done"


async def _status(client: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await client.get(path)).status_code == status


async def test_a_storage_fault_restarts_the_server_once_there_is_room(tmp_path: Path) -> None:
    """What nats-server logs when a write fails for lack of space: the stream stays failed
    until a restart; the supervisor restarts it (there is room here)."""
    async with EmbeddedNats(tmp_path / "nats", store_check_interval_s=0.1) as server:
        first = server.pid
        with server.log_path.open("a") as log:
            log.write("[1] 2026/01/01 00:00:00.000000 [ERR] Filestore [DUET_DOCS] Critical "
                      "write error: write .../1.blk: no space left on device\n")

        async def restarted() -> bool:
            return server.restarts == 1 and server.state == "running"

        await _until(restarted, timeout_s=10, what="a restart after the storage fault")
        assert server.pid != first
        nc = await connect(server.url, name="test")
        try:
            await nc.jetstream().account_info()
        finally:
            await close_nats(nc)
        await asyncio.sleep(0.5)
        assert server.restarts == 1  # the old line is not read again


async def test_a_publish_in_flight_when_the_server_dies_fails_at_once(tmp_path: Path) -> None:
    """An acknowledgment awaited when the server goes away is not awaited until its
    timeout: the publish fails as soon as the connection is lost (503 at the API)."""
    async with EmbeddedNats(tmp_path / "nats", min_backoff_s=0.1) as server:
        nc = await connect(server.url, name="test")
        try:
            await ensure_stream(nc.jetstream(), make_settings(tmp_path, server.url))
            event = DocumentEvent.model_validate({
                "event_type": "CREATE", "doc_id": "in-flight", "version": 1,
                "content": "# In flight\n\nPublished while the server froze, then died.",
                "metadata": {"title": "In flight", "acl": ["public"]}})
            await publish_event(nc, event)  # the stream works
            pid = server.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # the acknowledgment will not come
            publish = asyncio.ensure_future(publish_event(nc, event, timeout_s=120))
            await asyncio.sleep(0.3)
            assert not publish.done()
            os.kill(pid, signal.SIGKILL)  # the connection is lost while it waits
            with pytest.raises(DependencyError, match="went away during the publish"):
                await asyncio.wait_for(publish, 60)
        finally:
            await close_nats(nc)
