"""The supervisor socket over real websockets: docs/protocol.md §3, on one real gateway
(real NATS, embedded Chroma, the real embedding model and retrieval agent).

A customer escalates over the chat socket; a supervisor sees it live, claims it, gets the
transcript and the cited documents, reads the customer's words with an agent-assist draft,
answers as a person, and hands back to the bot, which remembers what was said. Refusals:
no or wrong token, unknown ids, double claims, acting on what one does not hold, bad input —
each an ``error`` on a socket that stays usable, each in the audit log.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from core.natsd import EmbeddedNats
from tests.conftest import Gateway, make_settings, run_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef01"
DOC = {"event_type": "CREATE", "doc_id": "hub-reset", "version": 4,
       "content": "# Resetting the hub\n\n## Factory reset\nHold the reset button for 15 "
                  "seconds until the LED flashes red, then wait 5 minutes for the hub to "
                  "restart.",
       "metadata": {"title": "Resetting the hub", "url": "https://help.example.com/hub-reset",
                    "acl": ["public"], "source": "cms"}}


class Socket:
    """A websocket that keeps what it receives and finds events by type."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Socket:
        return cls(await websockets.connect(url, **kwargs))

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout_s: float = 30) -> dict[str, Any]:
        item = json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        self.seen.append(item)
        return item

    async def until(self, kind: str, timeout_s: float = 60, **match: Any) -> dict[str, Any]:
        """The next event of ``kind`` (with fields equal to ``match``)."""
        while True:
            item = await self.recv(timeout_s)
            if item["type"] == kind and all(item.get(k) == v for k, v in match.items()):
                return item

    async def close(self) -> None:
        await self.ws.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp = tmp_path_factory.mktemp("supervisor")
    async with EmbeddedNats(tmp / "nats") as server:
        settings = make_settings(tmp, server.url, chat_rate_burst=50,
                                 supervisor_tokens=f"alice:{ALICE},bob:{BOB}")
        async with run_gateway(settings) as gateway, \
                httpx.AsyncClient(base_url=gateway.base_url) as client:
            res = await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
            assert res.status_code == 200, res.text
            yield gateway


def sup_url(gw: Gateway, token: str | None = None) -> str:
    return f"{gw.ws_url}/v1/supervisor" + (f"?token={token}" if token else "")


async def customer(gw: Gateway) -> Socket:
    chat = await Socket.open(f"{gw.ws_url}/v1/chat")
    await chat.send(type="hello")
    assert (await chat.recv())["type"] == "session"
    return chat


async def supervisor(gw: Gateway, token: str) -> tuple[Socket, dict[str, Any]]:
    sup = await Socket.open(sup_url(gw), additional_headers={"Authorization": f"Bearer {token}"})
    return sup, await sup.until("queue")


async def test_no_or_wrong_token_is_refused_before_the_upgrade(gw: Gateway) -> None:
    for url in (sup_url(gw), sup_url(gw, "wrong-token-0123456789abcdef")):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url)
        assert refused.value.response.status_code == 401
        assert b"alice" not in (refused.value.response.body or b"")
    async with httpx.AsyncClient(base_url=gw.base_url) as client:
        assert (await client.get("/v1/supervisor")).status_code in (401, 404, 405)


async def test_escalate_claim_talk_release_end_to_end(gw: Gateway) -> None:
    alice, first = await supervisor(gw, ALICE)
    assert "alice" in first["online"] and first["mine"] == []
    chat = await customer(gw)
    await chat.send(type="message", text="How do I factory reset the hub?")
    answered = await chat.until("done")
    assert answered["citations"][0]["doc_id"] == "hub-reset"
    await chat.send(type="handoff", reason="I'd like a person")
    escalated = await chat.until("escalated")
    assert escalated["supervisors_online"] >= 1 and "queue" in escalated["message"]
    sid = escalated["session_id"]

    seen = await alice.until("escalation", session_id=sid)
    assert seen["reason"] == "customer_request" and seen["note"] == "I'd like a person"
    assert seen["channel"] == "web" and seen["queue_position"] >= 1

    await alice.send(type="claim", session_id=sid)
    conversation = await alice.until("conversation", session_id=sid)
    assert conversation["state"] == "human" and conversation["agent"] == "alice"
    roles = [line["role"] for line in conversation["transcript"]]
    assert roles[:2] == ["customer", "bot"]
    assert conversation["documents"][0] == {
        "doc_id": "hub-reset", "title": "Resetting the hub",
        "url": "https://help.example.com/hub-reset", "version": 4,
        "updated_at": conversation["documents"][0]["updated_at"]}
    joined = await chat.until("agent_joined")
    assert joined["agent"]["name"] == "alice"

    # a second supervisor cannot take it, nor act on it
    bob, _ = await supervisor(gw, BOB)
    await bob.send(type="claim", session_id=sid)
    assert (await bob.until("error"))["code"] == "already_claimed"
    await bob.send(type="message", session_id=sid, text="Bob here")
    assert (await bob.until("error"))["code"] == "not_claimed"
    await bob.send(type="release", session_id=sid)
    assert (await bob.until("error"))["code"] == "not_claimed"

    # the customer's words reach the supervisor, with an agent-assist draft
    await chat.send(type="message", text="how long does the reset take?")
    said = await alice.until("customer_message", session_id=sid)
    assert said["text"] == "how long does the reset take?"
    draft = await alice.until("suggestion", session_id=sid)
    assert draft["for_seq"] == said["seq"] and draft["as_of"]
    assert draft["citations"][0]["doc_id"] == "hub-reset" and draft["citations"][0]["version"] == 4
    held = await chat.until("done")
    assert held["text"] == "" and held["cancelled"]  # the bot stays out while a person holds it
    assert all(e["type"] != "suggestion" for e in chat.seen)

    await alice.send(type="message", session_id=sid, text="Hi, Alice here: about 5 minutes.")
    human = await chat.until("delta")
    assert human["source"] == "human" and human["text"] == "Hi, Alice here: about 5 minutes."
    assert "turn_id" not in human  # a message of its own: no bot turn, no done

    await alice.send(type="release", session_id=sid)
    assert (await alice.until("released"))["session_id"] == sid
    assert (await chat.until("agent_left"))["agent"]["name"] == "alice"
    await alice.send(type="release", session_id=sid)
    assert (await alice.until("error"))["code"] == "not_claimed"

    # the bot is back, and its history has the person's words
    await chat.send(type="message", text="and what colour is the LED then?")
    back = await chat.until("done")
    assert back["decision"] in ("answer", "clarify", "fallback") and back["text"]
    session = gw.state.chat.sessions.held(sid)
    assert ("assistant", "Hi, Alice here: about 5 minutes.") in session.history

    audit = await gw.state.chat.router.audit.read(sid)
    actions = [(e.actor, e.action) for e in audit]
    for expected in [("customer", "escalate"), ("alice", "claim"), ("bob", "refused"),
                     ("alice", "message"), ("alice", "release")]:
        assert expected in actions
    for sock in (chat, alice, bob):
        await sock.close()


async def test_bad_input_gets_errors_and_the_socket_stays_usable(gw: Gateway) -> None:
    alice, _ = await supervisor(gw, ALICE)
    cases = [("not json", "invalid_json"), ('{"type": "dance"}', "unknown_type"),
             ('{"type": "claim", "session_id": "nope!"}', "invalid_message"),
             ('{"type": "claim", "session_id": "0123456789abcdef0123"}', "unknown_session"),
             ('{"type": "message", "session_id": "0123456789abcdef0123", "text": " "}',
              "empty_message"),
             ('{"type": "message", "session_id": "0123456789abcdef0123", "text": "'
              + "x" * 4001 + '"}', "message_too_long"),
             ('{"type": "close", "session_id": "0123456789abcdef0123"}', "unknown_session")]
    for raw, code in cases:
        await alice.ws.send(raw)
        error = await alice.until("error")
        assert error["code"] == code, raw
        assert "Traceback" not in error["message"]
    await alice.ws.send(b"\x00\x01")
    assert (await alice.until("error"))["code"] == "binary_not_supported"
    chat = await customer(gw)
    await chat.send(type="handoff")
    sid = (await chat.until("escalated"))["session_id"]
    await alice.send(type="claim", session_id=sid)
    await alice.until("conversation", session_id=sid)
    await alice.send(type="claim", session_id=sid)
    assert (await alice.until("error"))["code"] == "already_claimed"
    await alice.send(type="close", session_id=sid)
    assert (await alice.until("closed"))["session_id"] == sid
    await chat.until("agent_left")
    await alice.close()
    await chat.close()


async def test_a_reconnecting_console_finds_what_it_holds(gw: Gateway) -> None:
    chat = await customer(gw)
    await chat.send(type="handoff")
    sid = (await chat.until("escalated"))["session_id"]
    alice, _ = await supervisor(gw, ALICE)
    await alice.send(type="claim", session_id=sid)
    await alice.until("conversation", session_id=sid)
    await alice.close()
    again = await Socket.open(sup_url(gw, ALICE))  # browsers pass ?token=
    snapshot = await again.until("queue")
    assert sid in [c["session_id"] for c in snapshot["mine"]]
    assert (await again.until("conversation"))["session_id"] == sid
    await chat.send(type="message", text="are you still there?")
    assert (await again.until("customer_message", session_id=sid))["text"] == \
        "are you still there?"
    await again.send(type="release", session_id=sid)
    await again.until("released")
    await again.close()
    await chat.close()
