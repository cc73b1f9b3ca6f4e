"""Conversations outlive their gateway process: real `duet serve` processes on one NATS.

- 20 live sessions, the gateway SIGKILLed and restarted: every session resumes with its
  whole transcript, nothing lost or doubled, and goes on where it stopped.
- Two gateway processes on one NATS serve the same session: a customer who reconnects to
  the other process resumes there, and a listener on the first sees what the second says.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from core.natsd import EmbeddedNats
from tests.serve import ServeProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
DOC = {"event_type": "CREATE", "doc_id": "hub-reset", "version": 1,
       "content": "# Resetting the hub\n\n## Factory reset\nHold the reset button for 15 seconds "
                  "until the LED flashes red, then wait 5 minutes for the hub to restart.",
       "metadata": {"title": "Resetting the hub", "acl": ["public"], "source": "cms"}}


def start_gateway(data_dir: Path, nats_url: str, *, worker: bool = True) -> ServeProcess:
    """A `duet serve` process for these tests."""
    return ServeProcess(data_dir, nats_url, DUET_RUN_WORKER="1" if worker else "0",
                        DUET_CHAT_RATE_BURST="50")


class Customer:
    """One websocket conversation that remembers every event it saw."""

    def __init__(self) -> None:
        self.ws: Any = None
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.events: list[dict[str, Any]] = []

    async def connect(self, url: str, *, resume_from: int | None = None) -> dict[str, Any]:
        self.ws = await websockets.connect(url)
        hello: dict[str, Any] = {"type": "hello"}
        if self.session_id:
            hello |= {"session_id": self.session_id, "resume_token": self.resume_token,
                      "resume_from": resume_from}
        await self.ws.send(json.dumps(hello))
        first = await self.recv()
        assert first["type"] == "session", first
        self.session_id = first["session_id"]
        self.resume_token = first.get("resume_token") or self.resume_token
        return first

    async def recv(self, timeout_s: float = 60) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))

    async def until_done(self) -> list[dict[str, Any]]:
        got = []
        while True:
            item = await self.recv()
            got.append(item)
            if item["type"] == "done":
                return got

    async def ask(self, text: str) -> list[dict[str, Any]]:
        await self.ws.send(json.dumps({"type": "message", "text": text}))
        got = await self.until_done()
        self.events.extend(got)
        return got


async def _post_doc(gw: ServeProcess) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        res = await client.post(f"{gw.base}/v1/documents", params={"wait": "true"}, json=DOC)
        assert res.status_code == 200, res.text


async def test_twenty_sessions_survive_a_sigkill_and_restart(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats") as nats:
        first = start_gateway(tmp_path / "data", nats.url)
        try:
            await first.ready()
            await _post_doc(first)
            customers = [Customer() for _ in range(20)]
            for c in customers:
                await c.connect(f"{first.ws}/v1/chat")
            await asyncio.gather(*(c.ask("How do I factory reset the hub?") for c in customers))
            await asyncio.gather(*(c.ask("how long does that take?") for c in customers))
        finally:
            first.kill()
        for c in customers:
            with pytest.raises(websockets.ConnectionClosed):
                await c.recv(timeout_s=5)

        second = start_gateway(tmp_path / "data", nats.url)
        try:
            await second.ready()
            for c in customers:
                seen = list(c.events)
                opened = await c.connect(f"{second.ws}/v1/chat", resume_from=0)
                assert opened["resumed"] is True and opened["last_seq"] == seen[-1]["seq"]
                replay = [await c.recv() for _ in range(len(seen))]
                assert replay == seen  # nothing lost, nothing doubled, in order
                assert [e["seq"] for e in replay] == list(range(1, len(seen) + 1))
            # every conversation goes on where it stopped, with its history
            turns = await asyncio.gather(*(c.ask("and what colour is the LED?")
                                           for c in customers))
            for c, turn in zip(customers, turns, strict=True):
                assert turn[0]["type"] == "user_message"
                assert turn[0]["seq"] == c.events[-len(turn) - 1]["seq"] + 1
                assert "hub" in turn[-1]["rewritten_query"].lower()
            for c in customers:
                await c.ws.close()
        finally:
            second.stop()


async def test_two_gateway_processes_serve_one_session(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats") as nats:
        a = start_gateway(tmp_path / "a", nats.url)
        b = start_gateway(tmp_path / "b", nats.url, worker=False)
        try:
            await asyncio.gather(a.ready(), b.ready())
            await _post_doc(a)
            customer = Customer()
            await customer.connect(f"{a.ws}/v1/chat")
            await customer.ask("How do I factory reset the hub?")
            listener = Customer()  # the same customer's other tab stays on A
            listener.session_id, listener.resume_token = customer.session_id, customer.resume_token
            await listener.connect(f"{a.ws}/v1/chat")
            await customer.ws.close()

            # the customer comes back through the other process
            seen = list(customer.events)
            opened = await customer.connect(f"{b.ws}/v1/chat", resume_from=seen[-1]["seq"])
            assert opened["resumed"] is True and opened["last_seq"] == seen[-1]["seq"]
            turn = await customer.ask("thanks, and is there anything else I should know?")
            assert turn[0]["seq"] == seen[-1]["seq"] + 1
            # what B said reaches the listener on A, in order
            mirrored = await listener.until_done()
            assert [e["seq"] for e in mirrored] == [e["seq"] for e in turn]
            assert mirrored[-1]["text"] == turn[-1]["text"]

            # and back on A, a new turn continues the same sequence
            await customer.ws.close()
            await customer.connect(f"{a.ws}/v1/chat", resume_from=turn[-1]["seq"])
            again = await customer.ask("How do I factory reset the hub?")
            assert again[0]["seq"] == turn[-1]["seq"] + 1
            assert again[-1]["citations"][0]["doc_id"] == "hub-reset"
            await customer.ws.close()
            await listener.ws.close()
        finally:
            a.stop()
            b.stop()
