"""Limits with clear refusals (issue #11, docs/limits.md), against the real gateway.

Two client addresses on one machine: all of 127/8 is loopback on Linux, so the flooding
client connects from 127.0.0.1 and the honest one binds 127.0.0.2 as its source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from core.natsd import EmbeddedNats
from gateway.escalations import ConversationState
from tests.conftest import Gateway, make_settings, run_gateway

pytestmark = pytest.mark.integration

HONEST = "127.0.0.2"


class Chat:
    """A chat websocket that keeps what it receives."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout_s: float = 30) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))

    async def until(self, kind: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        got = []
        while True:
            got.append(await self.recv(timeout_s))
            if got[-1]["type"] == kind:
                return got

    async def close(self) -> None:
        await self.ws.close()


async def open_ws(gw: Gateway, source: str = "127.0.0.1") -> Chat:
    return Chat(await websockets.connect(f"{gw.ws_url}/v1/chat", local_addr=(source, 0)))


async def hello(gw: Gateway, source: str = "127.0.0.1", **fields: Any
                ) -> tuple[Chat, dict[str, Any]]:
    chat = await open_ws(gw, source)
    await chat.send(type="hello", **fields)
    return chat, await chat.recv()


def http(gw: Gateway, source: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(base_url=gw.base_url, transport=transport, timeout=30)


def refusals(gw: Gateway, limit: str) -> float:
    value = gw.state.metrics.registry.get_sample_value(
        "duet_refusals_total", {"limit": limit})
    return value or 0.0


def assert_429(res: httpx.Response, code: str = "rate_limited") -> None:
    assert res.status_code == 429, res.text
    assert int(res.headers["retry-after"]) >= 1
    assert res.json()["error"]["code"] == code


@contextlib.asynccontextmanager
async def gateway_with(tmp_path: Path, nats_url: str, **overrides: Any
                       ) -> AsyncIterator[Gateway]:
    async with run_gateway(make_settings(tmp_path, nats_url, **overrides)) as gw:
        yield gw


async def test_connections_past_the_address_limit_get_1013_and_429(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with gateway_with(tmp_path, nats_server.url, conn_per_address=3) as gw, \
            http(gw) as flood, http(gw, HONEST) as honest:
        held = [await open_ws(gw) for _ in range(3)]
        refused = await open_ws(gw)
        with pytest.raises(ConnectionClosed) as closed:
            await refused.recv(timeout_s=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert "too many connections" in closed.value.rcvd.reason
        assert_429(await flood.post("/v1/chat", json={"text": "hello"}))
        # probes are never starved, and the honest address is served
        assert (await flood.get("/healthz")).status_code in (200, 503)
        assert (await flood.get("/metrics")).status_code == 200
        chat, opened = await hello(gw, HONEST)
        assert opened["type"] == "session"
        await chat.send(type="message", text="how do I reset my bulb?")
        assert (await chat.until("done"))[-1]["type"] == "done"
        assert (await honest.post("/v1/chat", json={"text": "hi"})).status_code == 200
        assert refusals(gw, "connections_per_address") >= 2
        body = (await flood.get("/metrics")).text
        assert re.search(r'duet_refusals_total\{limit="connections_per_address"\} [2-9]', body)
        assert 'duet_connections_open{kind="websocket"}' in body
        # a freed slot is usable again
        await held.pop().close()
        for _ in range(100):
            if gw.state.metrics.registry.get_sample_value(
                    "duet_connections_open", {"kind": "websocket"}) <= 3:
                break
            await asyncio.sleep(0.05)
        again, opened = await hello(gw)
        assert opened["type"] == "session"
        for c in (*held, again, chat):
            await c.close()


async def test_session_flood_evicts_oldest_idle_and_it_resumes_from_the_journal(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with gateway_with(tmp_path, nats_server.url, sessions_per_address=3,
                            session_open_burst=100) as gw, http(gw) as client:
        sessions = gw.state.chat.sessions
        first, opened = await hello(gw)
        session_id, resume_token = opened["session_id"], opened["resume_token"]
        await first.send(type="message", text="can I return an opened bulb?")
        answered = await first.until("done")
        await first.close()
        for _ in range(3):
            assert (await client.post("/v1/chat", json={"text": "hello"})).status_code == 200
        assert sessions.held(session_id) is None  # the oldest idle one went first
        assert sessions.by_address("127.0.0.1") == 3
        registry = gw.state.metrics.registry
        assert registry.get_sample_value("duet_sessions_released_total",
                                         {"reason": "evicted_address"}) >= 1
        # durable: it comes back from the journal with its history and its events
        back, reopened = await hello(gw, session_id=session_id, resume_token=resume_token,
                                     resume_from=0)
        assert reopened["type"] == "session" and reopened["resumed"] is True
        replay = [await back.recv() for _ in range(len(answered))]
        assert [e["seq"] for e in replay] == [e["seq"] for e in answered]
        assert replay[0]["type"] == "user_message"
        assert replay[0]["text"] == "can I return an opened bulb?"
        assert sessions.held(session_id).history[0] == ("user", "can I return an opened bulb?")

        # with every held session connected, nothing can be let go: the open is refused
        others = [await hello(gw) for _ in range(2)]
        assert all(o[1]["type"] == "session" for o in others)
        refused, error = await hello(gw)
        assert error["type"] == "error" and error["code"] == "rate_limited"
        assert refusals(gw, "sessions_per_address") == 1
        for chat in (back, refused, *(o[0] for o in others)):
            await chat.close()


async def test_message_and_open_rates_count_per_address_across_sessions(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with gateway_with(tmp_path, nats_server.url, session_open_burst=3,
                            session_open_rate_per_s=0.001, address_message_burst=4,
                            address_message_rate_per_s=0.001) as gw, \
            http(gw) as flood, http(gw, HONEST) as honest:
        chat, opened = await hello(gw)  # open 1
        await chat.send(type="message", text="hello")  # message 1
        await chat.until("done")
        await chat.send(type="message", text="where is my order?")  # message 2
        await chat.until("done")
        res = await flood.post("/v1/chat", json={"text": "hi"})  # open 2, message 3
        assert res.status_code == 200
        again = {"session_id": res.json()["session_id"],
                 "resume_token": res.json()["resume_token"]}
        assert (await flood.post("/v1/chat", json={"text": "hi"})).status_code == 200  # 3, 4
        # each session is far under its own limit; the address is over its own
        over = await flood.post("/v1/chat", json={"text": "and now?", **again})
        assert_429(over)
        assert int(over.headers["retry-after"]) > 1  # the computed wait, not a default
        await chat.send(type="message", text="one more")
        error = (await chat.until("error"))[-1]
        assert error["type"] == "error" and error["code"] == "rate_limited"
        assert error["retry_after_s"] >= 1
        # a fourth session from the same address is refused too
        refused, error = await hello(gw)
        assert error["type"] == "error" and error["code"] == "rate_limited"
        assert "new conversations" in error["message"]
        # the honest address is untouched
        assert (await honest.post("/v1/chat", json={"text": "hi"})).status_code == 200
        assert refusals(gw, "messages_per_address") == 2
        assert refusals(gw, "session_opens_per_address") == 1
        await chat.close()
        await refused.close()


async def test_waiting_entries_leave_the_queue_when_their_sessions_end(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    idle = {"session_idle_s": 2.0}
    async with gateway_with(tmp_path / "a", nats_server.url, **idle) as one, \
            gateway_with(tmp_path / "b", nats_server.url, **idle) as two:
        queue_one, queue_two = one.state.chat.escalations, two.state.chat.escalations
        gone = []
        for _ in range(3):
            chat, opened = await hello(one)
            await chat.send(type="handoff", reason="a person please")
            escalated = (await chat.until("escalated"))[-1]
            gone.append((opened["session_id"], escalated["queue_position"]))
            await chat.close()
        assert [p for _, p in gone] == [1, 2, 3]
        # a waiting customer who moved to the other process and stays connected there
        stays, opened = await hello(one)
        await stays.send(type="handoff")
        await stays.until("escalated")
        await stays.close()
        stays, reopened = await hello(two, session_id=opened["session_id"],
                                      resume_token=opened["resume_token"])
        assert reopened["resumed"] is True

        for _ in range(300):
            if all(q.state(sid) is ConversationState.closed
                   for q in (queue_one, queue_two) for sid, _ in gone):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the expired sessions' waits were not closed")
        record = queue_two.get(gone[0][0])
        assert record.transitions[-1].reason == "abandoned"
        assert record.transitions[-1].actor == "system"
        await asyncio.sleep(5)  # well past idle_s: the connected customer still waits
        assert queue_two.state(opened["session_id"]) is ConversationState.waiting
        assert queue_one.position(opened["session_id"]) == 1
        # the next customer is second in line, not fifth
        new, _ = await hello(two)
        await new.send(type="handoff")
        assert (await new.until("escalated"))[-1]["queue_position"] == 2
        abandoned = sum(gw.state.metrics.registry.get_sample_value(
            "duet_conversations_abandoned_total") or 0 for gw in (one, two))
        assert abandoned == 3
        await new.close()
        await stays.close()


async def test_an_idle_durable_session_leaves_memory_and_resumes_whole(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with gateway_with(tmp_path, nats_server.url, session_unload_s=0.5,
                            session_shed_s=0.5) as gw:
        sessions = gw.state.chat.sessions
        chat, opened = await hello(gw)
        await chat.send(type="message", text="how do I track my order?")
        answered = await chat.until("done")
        await chat.close()
        for _ in range(200):
            if sessions.held(opened["session_id"]) is None:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the idle durable session stayed in memory")
        assert gw.state.metrics.registry.get_sample_value(
            "duet_sessions_released_total", {"reason": "unloaded"}) == 1
        back, reopened = await hello(gw, session_id=opened["session_id"],
                                     resume_token=opened["resume_token"],
                                     resume_from=answered[0]["seq"] - 1)
        assert reopened["resumed"] is True and reopened["last_seq"] == answered[-1]["seq"]
        replay = [await back.recv() for _ in range(len(answered))]
        assert [e["type"] for e in replay] == [e["type"] for e in answered]
        assert sessions.held(opened["session_id"]).history[0] == (
            "user", "how do I track my order?")
        await back.send(type="message", text="and how long does shipping take?")
        assert (await back.until("done"))[-1]["seq"] > answered[-1]["seq"]
        await back.close()


async def test_past_the_total_everyone_gets_1013_or_503_but_probes_pass(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with gateway_with(tmp_path, nats_server.url, conn_total=2) as gw, \
            http(gw, HONEST) as client:
        held = [await open_ws(gw), await open_ws(gw, HONEST)]
        refused = await open_ws(gw, HONEST)
        with pytest.raises(ConnectionClosed) as closed:
            await refused.recv(timeout_s=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        res = await client.post("/v1/chat", json={"text": "hello"})
        assert res.status_code == 503 and res.json()["error"]["code"] == "unavailable"
        assert int(res.headers["retry-after"]) >= 1
        assert (await client.get("/metrics")).status_code == 200
        assert refusals(gw, "connections_total") == 2
        for chat in held:
            await chat.close()
