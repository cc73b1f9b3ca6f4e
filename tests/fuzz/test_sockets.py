"""The receive loops under fuzzed frames, on one real gateway over loopback (issue #11).

Chat (``/v1/chat``), supervisor (``/v1/supervisor``) and voice (``/v1/voice``) sockets get
fuzzed text frames (hostile JSON, invalid UTF-8 and lone surrogates sent as text) and binary
frames. After each, a probe frame (a ``message`` with a field named uniquely) must get its
own ``invalid_message`` error, which names that field:
the socket answered with ``error`` events or closed with a clear code (1003/1007/1008/1009),
never crashed (1011) or hung. ``POST /v1/chat`` and ``POST /v1/documents`` with fuzzed
bodies answer 4xx with the JSON error shape (or accept a valid body), never 5xx, and a
refused document is never published. The WhatsApp webhook takes every signed body (its
inbox consumer then drops what is malformed, never failing on it) and refuses unsigned ones. Afterwards an honest client is served and every
connection's tasks are gone.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.whatsapp import WEBHOOK_PATH
from channels.whatsapp.payload import sign
from channels.whatsapp.store import CONSUMER, INBOX_STREAM
from core.natsd import EmbeddedNats
from gateway.events import parse_event
from tests.conftest import Gateway, make_settings, run_gateway
from tests.fakes_whatsapp import FakeGraph
from tests.fuzz.strategies import (
    examples,
    hostile_bytes,
    hostile_text,
    json_values,
    message_like,
    text_frames,
    whatsapp_deliveries,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SUPERVISOR = "fuzz-supervisor-token-0123456789"
WHATSAPP_SECRET = "fuzz-meta-app-secret"
CLEAR_CLOSE = {1000, 1003, 1007, 1008, 1009}
#: error codes that mean the server failed, not the input.
SERVER_FAILURES = {"fatal", "unavailable", "turn_failed"}
#: where the coroutines of one connection are written; none may outlive it.
CONNECTION_CODE = ("channels/chat_ws.py", "gateway/supervisor.py", "channels/voice/",
                   "uvicorn/protocols/websockets/")

Frame = tuple[str, str | bytes]  # ("text", str) | ("raw-text", bytes) | ("binary", bytes)


def _raw_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


frames = st.one_of(
    st.tuples(st.just("text"), text_frames(
        ["hello", "message", "cancel", "handoff", "claim", "release", "close"],
        ["session_id", "text", "resume_from", "customer_token", "resume_token", "channel",
         "id", "reason", "sample_rate", "encoding"]).filter(lambda t: _valid_utf8(t))),
    st.tuples(st.just("raw-text"), st.builds(_raw_text, hostile_text) | hostile_bytes),
    st.tuples(st.just("binary"), hostile_bytes),
)


def _valid_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp = tmp_path_factory.mktemp("fuzz")
    graph = await FakeGraph().start()
    try:
        async with EmbeddedNats(tmp / "nats") as server:
            settings_ = make_settings(
                tmp, server.url, chat_rate_burst=1000, chat_rate_per_s=100.0,
                supervisor_tokens=f"fuzz:{SUPERVISOR}", agent_assist=False,
                whatsapp_access_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id,
                whatsapp_api_base=graph.base_url, whatsapp_app_secret=WHATSAPP_SECRET)
            async with run_gateway(settings_) as gateway:
                yield gateway
    finally:
        await graph.close()


async def _send(ws: Any, frame: Frame) -> None:
    kind, payload = frame
    if kind == "binary":
        await ws.send(payload)
    elif kind == "raw-text":
        await ws.send(payload, text=True)  # not checked by the client: the server must
    else:
        await ws.send(payload)


async def _until_probe_answered(ws: Any, check: Any) -> int | None:
    """Send a probe; read until its error. None: answered; else the close code."""
    probe = f"probe-{uuid.uuid4().hex[:12]}"  # no earlier frame's answer can name it
    try:
        await ws.send(json.dumps({"type": "message", probe: 1}))
        while True:
            item = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert isinstance(item, dict) and isinstance(item.get("type"), str), item
            if item["type"] == "error":
                assert item["code"] not in SERVER_FAILURES, item
                assert isinstance(item["message"], str) and item["message"], item
                if probe in item["message"]:
                    assert item["code"] == "invalid_message", item
                    return None
            check(item)
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd is not None else None
        assert code in CLEAR_CLOSE, f"closed with {code} ({closed})"
        return code


def _chat_event(item: dict[str, Any]) -> None:
    parse_event(item)  # whatever the chat socket sends is a typed server event


def _any_event(item: dict[str, Any]) -> None:
    pass


async def _fuzz(url: str, frames_: list[Frame], check: Any, **connect: Any) -> None:
    async with websockets.connect(url, max_size=None, **connect) as ws:
        if "supervisor" in url:
            assert json.loads(await ws.recv())["type"] == "queue"
        for frame in frames_:
            await _send(ws, frame)
            if await _until_probe_answered(ws, check) is not None:
                return


@settings(max_examples=examples(60, socket=True))
@given(st.lists(frames, min_size=1, max_size=3))
async def test_the_chat_socket_answers_every_frame(gw: Gateway, frames_: list[Frame]) -> None:
    await _fuzz(f"{gw.ws_url}/v1/chat", frames_, _chat_event)


@settings(max_examples=examples(40, socket=True))
@given(st.lists(frames, min_size=1, max_size=3))
async def test_the_supervisor_socket_answers_every_frame(gw: Gateway,
                                                         frames_: list[Frame]) -> None:
    await _fuzz(f"{gw.ws_url}/v1/supervisor", frames_, _any_event,
                additional_headers={"Authorization": f"Bearer {SUPERVISOR}"})


@settings(max_examples=examples(40, socket=True))
@given(st.lists(frames, min_size=1, max_size=3))
async def test_the_voice_socket_answers_every_frame(gw: Gateway, frames_: list[Frame]) -> None:
    await _fuzz(f"{gw.ws_url}/v1/voice", frames_, _any_event)


_json_types = st.sampled_from(["application/json", "application/json; charset=utf-8",
                               "application/json; charset=latin-1", "text/plain", ""])
_bodies = st.one_of(
    st.builds(lambda t: _raw_text(t), hostile_text), hostile_bytes,
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(lambda v: json.dumps(v).encode(), message_like(
        ["CREATE", "UPDATE", "DELETE"], ["text", "session_id", "customer_token", "id",
                                         "event_type", "doc_id", "version", "content",
                                         "metadata", "timestamp"])),
)


def _refusal_or_ok(res: httpx.Response) -> None:
    assert res.status_code < 500, (res.status_code, res.text)
    if res.status_code >= 400:
        error = res.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert error["message"] and len(error["message"]) <= 2000


@settings(max_examples=examples(40, socket=True))
@given(_bodies, _json_types)
async def test_http_chat_answers_every_body_with_a_clear_status(gw: Gateway, body: bytes,
                                                                content_type: str) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:
        res = await client.post("/v1/chat", content=body,
                                headers={"content-type": content_type} if content_type else {})
    _refusal_or_ok(res)


async def _published(gw: Gateway) -> int:
    js = gw.state.runtime.nc.jetstream()
    return (await js.stream_info(gw.settings.stream_name)).state.messages


@settings(max_examples=examples(40, socket=True))
@given(_bodies, _json_types)
async def test_http_documents_answer_every_body_and_publish_only_what_they_accept(
        gw: Gateway, body: bytes, content_type: str) -> None:
    before = await _published(gw)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:
        res = await client.post("/v1/documents", content=body,
                                headers={"content-type": content_type} if content_type else {})
    _refusal_or_ok(res)
    assert await _published(gw) - before == (1 if res.status_code == 202 else 0)


@settings(max_examples=examples(40, socket=True))
@given(st.one_of(
    st.builds(lambda t: _raw_text(t), hostile_text), hostile_bytes,
    st.builds(lambda v: json.dumps(v).encode(), json_values | whatsapp_deliveries)),
    st.booleans())
async def test_the_whatsapp_webhook_takes_signed_bodies_and_refuses_the_rest(
        gw: Gateway, body: bytes, signed: bool) -> None:
    headers = {"content-type": "application/json"}
    if signed:
        headers["x-hub-signature-256"] = sign(WHATSAPP_SECRET.encode(), body)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:
        res = await client.post(WEBHOOK_PATH, content=body, headers=headers)
    _refusal_or_ok(res)
    assert res.status_code == (200 if signed else 401)


async def test_every_whatsapp_delivery_was_handled_once(gw: Gateway) -> None:
    """Malformed deliveries are dropped (term), the rest answered: none is redelivered
    because handling it failed, and the inbox drains."""
    js = gw.state.runtime.nc.jetstream()
    for _ in range(600):
        info = await js.consumer_info(INBOX_STREAM, CONSUMER)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert info.num_pending == 0 and info.num_ack_pending == 0, info
    assert info.num_redelivered == 0, info
    assert info.delivered.stream_seq > 0  # the fuzz above did deliver


async def test_after_the_fuzz_an_honest_client_is_served_and_no_task_is_left(
        gw: Gateway) -> None:
    async with websockets.connect(f"{gw.ws_url}/v1/chat") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await ws.recv())["type"] == "session"
        await ws.send(json.dumps({"type": "message", "text": "How do I reset the hub?"}))
        while (item := json.loads(await asyncio.wait_for(ws.recv(), 120)))["type"] != "done":
            assert item["type"] != "error", item
        assert _connection_tasks()  # the check below sees this connection's tasks
    for _ in range(300):
        left = _connection_tasks()
        if not left:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"tasks left behind: {left}")


def _connection_tasks() -> list[asyncio.Task[Any]]:
    """The running tasks whose coroutine is part of a socket connection."""
    left = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and any(
                part in code.co_filename for part in CONNECTION_CODE):
            left.append(task)
    return left
