"""The dual-agent chat turn over real websockets and HTTP: docs/protocol.md §1.

One gateway with the sample knowledge base serves the whole module (real NATS, embedded
Chroma, the real embedding model); every test opens sessions of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import websockets

from core.natsd import EmbeddedNats
from core.settings import Settings
from gateway.auth import CustomerTokens
from tests.conftest import Gateway, make_settings, run_gateway
from tests.fakes import FakeLLM

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SECRET = "chat-tests-signing-secret-0123456789abcdef"
#: The article's sentences, which the slow model says back one by one (every one grounded,
#: so the grounding check lets the whole long answer through).
STEPS = ["Hold the reset button for 15 seconds until the LED flashes red.",
         "Wait 5 minutes while the hub restarts.",
         "Open the app on your phone.",
         "Tap Add device and choose Hub.",
         "Scan the code on the bottom of the hub.",
         "Keep the phone close to the hub.",
         "Pick your home network from the list.",
         "Type the password of your home network.",
         "Wait until the LED turns solid green.",
         "Add your bulbs again from the Devices tab."]


def token(sub: str, groups: list[str], ttl_s: float = 600) -> str:
    """A customer token as the company's backend would sign it."""
    return CustomerTokens(Settings(_env_file=None, customer_token_secret=SECRET)).mint(
        sub, groups, ttl_s)


SAMPLE = sorted(p.stem for p in (Path(__file__).parents[2] / "configs" / "sample_kb").glob("*.md"))


async def _wait_sample_kb(gw: Gateway) -> None:
    registry = gw.state.runtime.registry
    for _ in range(600):
        records = [(await registry.get(d))[0] for d in SAMPLE]
        if all(r is not None and r.state.value == "hot" for r in records):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the sample knowledge base was not indexed")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp = tmp_path_factory.mktemp("chat")
    async with EmbeddedNats(tmp / "nats") as server:
        # A ready acknowledgment waits for the search to start, or for a prefetch hit's
        # answer, however busy the machine (the default 0.1 s is a latency choice).
        settings = make_settings(tmp, server.url, load_sample_kb=True, chat_rate_burst=8,
                                 chat_rate_per_s=2.0, customer_token_secret=SECRET,
                                 ack_hold_s=10.0)
        async with run_gateway(settings) as gateway:
            await _wait_sample_kb(gateway)
            yield gateway


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Gateway, FakeLLM]]:
    """A gateway whose answers come from a slow OpenAI-compatible model (long turns)."""
    tmp = tmp_path_factory.mktemp("slow")
    llm = FakeLLM()
    llm.token_delay_s = 0.4
    llm.tokens = [f"{step} " for step in STEPS]
    await llm.start()
    async with EmbeddedNats(tmp / "nats") as server:
        settings = make_settings(tmp, server.url, llm_base_url=llm.base_url,
                                 llm_first_token_timeout_s=5.0, llm_total_timeout_s=30.0)
        async with run_gateway(settings) as gateway, \
                httpx.AsyncClient(base_url=gateway.base_url) as client:
            res = await client.post("/v1/documents", params={"wait": "true"}, json=doc(
                "hub-reset", "# Resetting the hub\n\n## Factory reset\n" + " ".join(STEPS)))
            assert res.status_code == 200
            yield gateway, llm
    await llm.close()


def doc(doc_id: str, content: str, *, version: int = 1, acl: list[str] | None = None,
        title: str | None = None) -> dict[str, Any]:
    return {"event_type": "CREATE" if version == 1 else "UPDATE", "doc_id": doc_id,
            "version": version, "content": content,
            "metadata": {"title": title or doc_id.replace("-", " ").title(),
                         "acl": acl or ["public"], "source": "cms"}}


class Chat:
    """A websocket chat client that keeps every event it receives."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout_s: float = 30) -> dict[str, Any]:
        item = json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        self.events.append(item)
        return item

    async def until(self, kind: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Events up to and including the next one of ``kind``."""
        got = []
        while True:
            item = await self.recv(timeout_s)
            got.append(item)
            if item["type"] == kind:
                return got

    async def ask(self, text: str, **extra: Any) -> list[dict[str, Any]]:
        await self.send(type="message", text=text, **extra)
        return await self.until("done")


async def connect(gateway: Gateway, **hello: Any) -> tuple[Chat, dict[str, Any]]:
    ws = await websockets.connect(f"{gateway.ws_url}/v1/chat")
    chat = Chat(ws)
    await chat.send(type="hello", **hello)
    first = await chat.recv()
    assert first["type"] == "session"
    return chat, first


def deltas(events: list[dict[str, Any]], source: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "delta" and (source is None or e["source"] == source)]


async def test_one_turn_is_one_ordered_stream_ack_then_answer(gw: Gateway) -> None:
    chat, session = await connect(gw)
    assert session["resumed"] is False and session["seq"] == 0
    events = await chat.ask("Can I return an opened item?")
    done = events[-1]
    sources = [e["source"] for e in deltas(events)]
    assert sources[0] == "ack" and "answer" in sources
    assert sources == sorted(sources)  # every ack delta comes before every answer delta
    assert done["text"] == "".join(e["text"] for e in deltas(events))
    assert "restocking" in done["text"] and "$" not in deltas(events, "ack")[0]["text"]
    assert [c["doc_id"] for c in done["citations"]][0] == "returns-policy"
    citation = done["citations"][0]
    assert citation["version"] == 1 and citation["updated_at"].endswith("Z")
    assert done["as_of"] and 0 <= done["confidence"] <= 1 and done["decision"] == "answer"
    timings = done["timings_ms"]
    assert timings["ack_first"] <= timings["answer_first"] <= timings["total"]
    seqs = [e["seq"] for e in chat.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e["session_id"] == session["session_id"] for e in chat.events)
    assert len({e["turn_id"] for e in events}) == 1
    await chat.ws.close()


async def test_follow_up_is_rewritten_and_a_pivot_starts_fresh(gw: Gateway) -> None:
    chat, _ = await connect(gw)
    first = (await chat.ask("How do I factory reset the hub?"))[-1]
    assert first["citations"][0]["doc_id"] == "hub-reset"
    follow = (await chat.ask("how long does that take?"))[-1]
    assert "hub" in follow["rewritten_query"].lower()
    assert follow["citations"][0]["doc_id"] == "hub-reset" and "5 minutes" in follow["text"]
    pivot = (await chat.ask("also, my bulbs won't pair"))[-1]
    assert pivot["citations"][0]["doc_id"] == "pairing-bulbs"
    assert "hub-reset" not in pivot["rewritten_query"]
    await chat.ws.close()


async def test_unknown_question_degrades_gracefully(gw: Gateway) -> None:
    chat, _ = await connect(gw)
    done = (await chat.ask("Do you sell lawnmowers?"))[-1]
    assert done["decision"] == "fallback" and done["confidence"] < 0.3
    assert "person" in done["text"].lower() or "someone" in done["text"].lower()
    assert "lawnmower" in done["text"].lower()
    await chat.ws.close()


async def test_document_updated_mid_conversation_changes_the_next_answer(gw: Gateway) -> None:
    chat, _ = await connect(gw)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
        v1 = "# Gift cards\n\n## Price\nA Lumora gift card costs 25 dollars and never expires."
        assert (await client.post("/v1/documents", params={"wait": "true"},
                                  json=doc("gift-cards", v1))).status_code == 200
        before = (await chat.ask("How much does a gift card cost?"))[-1]
        assert "25 dollars" in before["text"] and before["citations"][0]["version"] == 1
        v2 = v1.replace("25 dollars", "30 dollars")
        assert (await client.post("/v1/documents", params={"wait": "true"},
                                  json=doc("gift-cards", v2, version=2))).status_code == 200
    after = (await chat.ask("How much does a gift card cost?"))[-1]
    assert "30 dollars" in after["text"] and "25 dollars" not in after["text"]
    assert after["citations"][0]["version"] == 2
    assert after["as_of"] > before["as_of"]
    await chat.ws.close()


async def test_acl_groups_filter_what_a_customer_can_be_told(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
        staff = ("# Loyalty override\n\n## Rule\nStaff may extend the return window for "
                 "loyalty members to 120 days on request.")
        await client.post("/v1/documents", params={"wait": "true"},
                          json=doc("loyalty-override", staff, acl=["staff"]))
    question = "Can the return window be extended to 120 days for loyalty members?"
    public, _ = await connect(gw)
    done = (await public.ask(question))[-1]
    assert "loyalty-override" not in [c["doc_id"] for c in done["citations"]]
    assert "120 days" not in done["text"]
    # a group the client merely claims grants nothing
    claimed, _ = await connect(gw, customer={"id": "agent-7", "groups": ["staff"]})
    done = (await claimed.ask(question))[-1]
    assert "loyalty-override" not in [c["doc_id"] for c in done["citations"]]
    assert "120 days" not in done["text"]
    # a token the company signed does
    staff, opened = await connect(gw, customer_token=token("agent-7", ["staff"]))
    assert "resume_token" not in opened or opened["resume_token"] is None
    done = (await staff.ask(question))[-1]
    assert done["citations"][0]["doc_id"] == "loyalty-override"
    for chat in (public, claimed, staff):
        await chat.ws.close()


async def test_a_bad_customer_token_opens_no_session(gw: Gateway) -> None:
    other = CustomerTokens(Settings(_env_file=None, customer_token_secret="x" * 48)).mint(
        "agent-7", ["staff"])
    expired = jwt.encode({"sub": "agent-7", "groups": ["staff"], "exp": int(time.time()) - 600},
                         SECRET, algorithm="HS256")
    for bad in (other, expired, "not.a.jwt"):
        ws = await websockets.connect(f"{gw.ws_url}/v1/chat")
        chat = Chat(ws)
        await chat.send(type="hello", customer_token=bad)
        refused = await chat.recv()
        assert refused["type"] == "error" and refused["code"] == "unauthorized"
        assert refused["session_id"] is None
        await chat.send(type="message", text="anyone there?")  # the connection stays usable
        assert (await chat.recv())["type"] == "session"
        await ws.close()


async def test_a_token_customer_resumes_by_token_and_nobody_else_does(gw: Gateway) -> None:
    alice = token("alice", [])
    chat, opened = await connect(gw, customer_token=alice)
    await chat.ask("What are your support hours?")
    await chat.ws.close()
    again, resumed = await connect(gw, customer_token=token("alice", []),
                                   session_id=opened["session_id"], resume_from=0)
    assert resumed["resumed"] is True
    for hello in ({"customer_token": token("mallory", [])}, {}):
        ws = await websockets.connect(f"{gw.ws_url}/v1/chat")
        other = Chat(ws)
        await other.send(type="hello", session_id=opened["session_id"], resume_from=0, **hello)
        refused = await other.recv()
        assert refused["code"] == "unauthorized" and "hours" not in refused["message"]
        await ws.close()
    await again.ws.close()


async def test_prefetch_answers_a_scripted_follow_up_without_an_ack(gw: Gateway) -> None:
    chat, opened = await connect(gw)
    await chat.ask("How do I factory reset the hub?")
    # the prefetch runs as a task of the session after the turn: wait until it has ended
    session = gw.state.chat.sessions.held(opened["session_id"])
    for _ in range(600):
        if not session._tasks:
            break
        await asyncio.sleep(0.05)
    events = await chat.ask("After the reset, how do I pair my bulbs again?")
    done = events[-1]
    assert done["prefetch_hit"] is True
    assert deltas(events, "ack") == []
    assert done["citations"] and done["timings_ms"]["ack_first"] is None
    await chat.ws.close()


async def test_resume_replays_every_event_after_the_given_seq(gw: Gateway) -> None:
    chat, session = await connect(gw)
    await chat.ask("What are your support hours?")
    seen = chat.events[1:]
    await chat.ws.close()
    middle = seen[len(seen) // 2]["seq"]
    again, resumed = await connect(gw, session_id=session["session_id"], resume_from=middle,
                                   resume_token=session["resume_token"])
    assert resumed["resumed"] is True and resumed["seq"] == middle
    replay = [await again.recv() for _ in range(len([e for e in seen if e["seq"] > middle]))]
    assert replay == [e for e in seen if e["seq"] > middle]
    # the session goes on: its next turn continues the sequence
    events = await again.ask("thanks!")
    assert events[0]["seq"] == seen[-1]["seq"] + 1
    await again.ws.close()


async def test_unknown_or_foreign_session_is_refused_alike(gw: Gateway) -> None:
    owner, session = await connect(gw)
    await owner.ask("What are your support hours?")
    refusals = []
    for hello in ({"session_id": "fresh-session-123", "resume_from": 0},
                  {"session_id": session["session_id"], "resume_from": 0},
                  {"session_id": session["session_id"], "resume_token": "guess" * 8}):
        ws = await websockets.connect(f"{gw.ws_url}/v1/chat")
        chat = Chat(ws)
        await chat.send(type="hello", **hello)
        refusals.append(await chat.recv())
        await ws.close()
    assert all(r["type"] == "error" and r["code"] == "unauthorized" for r in refusals)
    assert len({r["message"] for r in refusals}) == 1  # nothing says whether it exists
    assert "hours" not in json.dumps(refusals)
    await owner.ws.close()


@pytest.mark.parametrize(("frame", "code"), [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('{"type": "shout", "text": "hi"}', "unknown_type"),
    ('{"type": "message"}', "invalid_message"),
    ('{"type": "message", "text": "   "}', "empty_message"),
    (json.dumps({"type": "message", "text": "x" * 4001}), "message_too_long"),
    ('{"type": "message", "text": "hi", "extra": 1}', "invalid_message"),
    ('{"type": "hello", "session_id": "bad id!"}', "invalid_message"),
    ('{"type": "cancel"}', "no_turn"),
    (b"\x00\x01binary", "binary_not_supported"),
    ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ('{"type": "hello", "customer": {"id": "x", "groups": ["staff"]}, "resume_from": 1}',
     "invalid_message"),  # a second hello on a connection that has a session
])
async def test_bad_input_gets_an_error_and_the_session_keeps_working(
        gw: Gateway, frame: str | bytes, code: str) -> None:
    chat, _ = await connect(gw)
    await chat.ws.send(frame)
    error = await chat.recv()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    done = (await chat.ask("How do I reset a bulb?"))[-1]
    assert done["citations"][0]["doc_id"] == "bulb-reset"
    await chat.ws.close()


async def test_flood_is_rate_limited_and_the_session_recovers(gw: Gateway) -> None:
    chat, _ = await connect(gw)
    for i in range(12):
        await chat.send(type="message", text=f"hello number {i}")
    codes = []
    while len([e for e in chat.events if e["type"] == "done"]) + len(codes) < 12:
        item = await chat.recv()
        if item["type"] == "error":
            codes.append(item["code"])
    assert codes and set(codes) == {"rate_limited"}
    await asyncio.sleep(1.0)
    assert (await chat.ask("How do I reset a bulb?"))[-1]["text"]
    await chat.ws.close()


async def test_repeated_client_message_id_is_not_a_new_turn(gw: Gateway) -> None:
    chat, _ = await connect(gw)
    await chat.ask("Where is my order?", id="m-1")
    await chat.send(type="message", text="Where is my order?", id="m-1")
    error = await chat.recv()
    assert error["type"] == "error" and error["code"] == "duplicate_message"
    await chat.ws.close()


async def test_handoff_escalates_with_a_queue_position(gw: Gateway) -> None:
    chat, _ = await connect(gw)
    await chat.send(type="handoff", reason="I'd like a person")
    escalated = await chat.recv()
    assert escalated["type"] == "escalated" and escalated["reason"] == "customer_request"
    assert escalated["queue_position"] >= 1
    await chat.ws.close()


async def test_asking_for_a_person_escalates_after_the_reply(gw: Gateway) -> None:
    chat, _ = await connect(gw)
    await chat.send(type="message", text="I want to talk to a human right now")
    events = await chat.until("escalated")
    assert [e["type"] for e in events][-2:] == ["done", "escalated"]
    assert events[-1]["reason"] == "human_request"
    await chat.ws.close()


async def test_http_json_returns_the_done_event(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
        res = await client.post("/v1/chat", json={"text": "How long does shipping take?"})
        assert res.status_code == 200
        body = res.json()
        assert body["type"] == "done" and body["citations"] and body["session_id"]
        follow = await client.post("/v1/chat", json={"session_id": body["session_id"],
                                                     "resume_token": body["resume_token"],
                                                     "text": "and to Canada?"})
        assert follow.json()["seq"] > body["seq"]
        stranger = await client.post("/v1/chat", json={"session_id": body["session_id"],
                                                       "text": "what did I ask before?"})
        assert stranger.status_code == 401
        assert stranger.json()["error"]["code"] == "unauthorized"


async def test_http_json_carries_the_escalation_that_follows_the_turn(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
        res = await client.post("/v1/chat", json={"text": "I want to talk to a human right now"})
    body = res.json()
    assert res.status_code == 200 and body["type"] == "done"
    assert body["escalated"]["reason"] == "human_request"
    assert body["escalated"]["seq"] == body["seq"] + 1


async def test_http_sse_streams_the_same_events(gw: Gateway) -> None:
    events = []
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client, \
            client.stream("POST", "/v1/chat", json={"text": "How do I reset a bulb?"},
                          headers={"accept": "text/event-stream"}) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        async for line in res.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["session", "user_message", "delta"] and kinds[-1] == "done"
    assert events[0]["resume_token"]
    assert events[-1]["text"] == "".join(e["text"] for e in events if e["type"] == "delta")


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"text": ""}, 422, "empty_message"),
    ({"text": "x" * 4001}, 413, "message_too_long"),
    ({"txt": "hello"}, 422, "invalid_message"),
    ({"text": "hi", "session_id": "no spaces allowed"}, 422, "invalid_message"),
    ({"text": "hi", "session_id": "abcdefgh1234", "resume_token": "x" * 20}, 401, "unauthorized"),
])
async def test_http_bad_input(gw: Gateway, body: dict, status: int, code: str) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
        res = await client.post("/v1/chat", json=body)
    assert res.status_code == status and res.json()["error"]["code"] == code


async def test_http_deeply_nested_json_is_refused_plainly(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
        res = await client.post("/v1/chat", content="[" * 100_000 + "]" * 100_000,
                                headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["error"]["code"] == "invalid_message"


async def test_a_broken_session_does_not_delay_another(gw: Gateway) -> None:
    broken = await websockets.connect(f"{gw.ws_url}/v1/chat")
    await broken.send(json.dumps({"type": "message", "text": "How do I reset the hub?"}))
    await broken.send(b"\xff" * 1000)
    await broken.close()  # gone mid-turn, never reads its events
    chats = [(await connect(gw))[0] for _ in range(4)]
    dones = await asyncio.gather(*(c.ask("How do I reset a bulb?") for c in chats))
    assert all(d[-1]["citations"][0]["doc_id"] == "bulb-reset" for d in dones)
    for c in chats:
        await c.ws.close()


async def test_cancel_stops_the_reply_with_no_late_deltas(slow_gw: tuple[Gateway, FakeLLM]) -> None:
    gateway, _ = slow_gw
    chat, _ = await connect(gateway)
    await chat.send(type="message", text="How do I factory reset the hub?")
    first = await chat.until("delta")
    turn_id = first[-1]["turn_id"]
    await chat.until("delta")  # at least one more piece
    await chat.send(type="cancel")
    done = (await chat.until("done"))[-1]
    assert done["cancelled"] is True and done["turn_id"] == turn_id
    with pytest.raises(TimeoutError):
        await chat.recv(timeout_s=1.5)  # nothing more arrives for the cancelled turn
    assert done["text"] == "".join(e["text"] for e in deltas(chat.events))
    await chat.ws.close()


async def test_new_message_barges_in_on_the_reply_in_progress(
        slow_gw: tuple[Gateway, FakeLLM]) -> None:
    gateway, llm = slow_gw
    chat, _ = await connect(gateway)
    await chat.send(type="message", text="How do I factory reset the hub?")
    await chat.until("delta")
    await chat.send(type="message", text="How long does the factory reset take?")
    cancelled = (await chat.until("done"))[-1]
    assert cancelled["cancelled"] is True
    llm.token_delay_s = 0.0
    try:
        second = await chat.until("done", timeout_s=30)
    finally:
        llm.token_delay_s = 0.4
    assert second[-1]["cancelled"] is False and second[-1]["turn_id"] != cancelled["turn_id"]
    assert all(e["turn_id"] == second[-1]["turn_id"] for e in second)
    await chat.ws.close()


async def test_disconnect_mid_turn_then_resume_gets_the_rest(
        slow_gw: tuple[Gateway, FakeLLM]) -> None:
    gateway, _ = slow_gw
    chat, session = await connect(gateway)
    await chat.send(type="message", text="How do I factory reset the hub?")
    got = await chat.until("delta")
    await chat.ws.close()
    last = got[-1]["seq"]
    again, resumed = await connect(gateway, session_id=session["session_id"], resume_from=last,
                                   resume_token=session["resume_token"])
    rest = await again.until("done", timeout_s=30)
    assert rest[0]["seq"] == last + 1
    assert [e["seq"] for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    full = "".join(e["text"] for e in deltas(got + rest))
    assert rest[-1]["text"] == full and STEPS[-1] in full
    await again.ws.close()


async def test_a_text_frame_that_is_not_utf8_closes_with_1007_and_logs_no_error(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    ws = await websockets.connect(f"{gw.ws_url}/v1/chat")
    await ws.send(b"\xff\xfe not text", text=True)  # the client does not check: the server must
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code == 1007
    said = [r for r in caplog.records if r.name == "uvicorn.error" and "UTF-8" in r.getMessage()]
    assert said and all(r.levelno == logging.INFO and r.exc_info is None for r in said)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
