"""The human side outlives its gateway process: real `duet serve` processes on one NATS.

- Waiting conversations and claims survive a SIGKILL and restart: the supervisor's console
  reconnects to the same queue and the conversations it holds, with their transcripts, and
  goes on talking to the customers.
- Two gateway processes share one queue and one set of claims: a supervisor connected to
  one reaches a customer connected to the other, both ways, and a claim on one process is
  refused to a supervisor of the other.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from core.natsd import EmbeddedNats
from tests.e2e.test_supervisor import DOC, Socket
from tests.serve import ServeProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef01"


class Serve(ServeProcess):
    """A `duet serve` process with the two supervisors' tokens."""

    def __init__(self, data_dir: Path, nats_url: str, *, worker: bool = True) -> None:
        super().__init__(data_dir, nats_url, DUET_RUN_WORKER="1" if worker else "0",
                         DUET_CHAT_RATE_BURST="50",
                         DUET_SUPERVISOR_TOKENS=f"alice:{ALICE},bob:{BOB}")

    async def post_doc(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            res = await client.post(f"{self.base}/v1/documents", params={"wait": "true"},
                                    json=DOC)
            assert res.status_code == 200, res.text


async def chat(gw: Serve, hello: dict | None = None) -> tuple[Socket, dict]:
    sock = await Socket.open(f"{gw.ws}/v1/chat")
    await sock.send(**(hello or {"type": "hello"}))
    opened = await sock.until("session")
    return sock, opened


async def console(gw: Serve, token: str) -> tuple[Socket, dict]:
    sock = await Socket.open(f"{gw.ws}/v1/supervisor?token={token}")
    return sock, await sock.until("queue")


async def test_queue_claims_and_transcripts_survive_a_sigkill(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats") as nats:
        first = Serve(tmp_path / "data", nats.url)
        try:
            await first.ready()
            alice, _ = await console(first, ALICE)
            customers = []
            for i in range(4):
                sock, opened = await chat(first)
                await sock.send(type="message", text=f"I need a person please ({i})")
                await sock.until("escalated")
                customers.append((sock, opened))
            ids = [opened["session_id"] for _, opened in customers]
            for sid in ids[:2]:
                await alice.send(type="claim", session_id=sid)
                await alice.until("conversation", session_id=sid)
            await alice.send(type="message", session_id=ids[0], text="Alice here, hello!")
            await customers[0][0].until("delta", source="human")
        finally:
            first.kill()

        second = Serve(tmp_path / "data", nats.url)
        try:
            await second.ready()
            again, snapshot = await console(second, ALICE)
            assert [c["session_id"] for c in snapshot["waiting"]] == ids[2:]
            assert sorted(c["session_id"] for c in snapshot["mine"]) == sorted(ids[:2])
            views = {}
            for _ in range(2):
                view = await again.until("conversation")
                views[view["session_id"]] = view
            lines = [(line["role"], line["text"]) for line in views[ids[0]]["transcript"]]
            assert ("customer", "I need a person please (0)") in lines
            assert ("human", "Alice here, hello!") in lines
            # the customer comes back and the conversation goes on with the person
            sock, opened = await chat(second, {
                "type": "hello", "session_id": ids[0],
                "resume_token": customers[0][1]["resume_token"]})
            assert opened["resumed"] is True
            await sock.send(type="message", text="still there?")
            said = await again.until("customer_message", session_id=ids[0])
            assert said["text"] == "still there?"
            await again.send(type="message", session_id=ids[0], text="Yes, still here.")
            assert (await sock.until("delta", source="human"))["text"] == "Yes, still here."
            # a waiting customer is still waiting, and the bot answers no facts
            waiting, _ = await chat(second, {
                "type": "hello", "session_id": ids[3],
                "resume_token": customers[3][1]["resume_token"]})
            await waiting.send(type="message", text="How do I reset the hub?")
            reply = await waiting.until("done")
            assert "queue" in reply["text"] and not reply["citations"]
            for s in (sock, waiting, again):
                await s.close()
        finally:
            second.stop()


async def test_a_supervisor_on_one_process_reaches_a_customer_on_another(tmp_path: Path
                                                                         ) -> None:
    async with EmbeddedNats(tmp_path / "nats") as nats:
        a = Serve(tmp_path / "a", nats.url)
        b = Serve(tmp_path / "b", nats.url, worker=False)
        try:
            await asyncio.gather(a.ready(), b.ready())
            await a.post_doc()
            alice, _ = await console(a, ALICE)
            bob, _ = await console(b, BOB)
            customer, opened = await chat(b)
            sid = opened["session_id"]
            await customer.send(type="handoff", reason="a person, please")
            escalated = await customer.until("escalated")
            assert escalated["supervisors_online"] == 2  # presence is shared too
            assert (await alice.until("escalation", session_id=sid))["channel"] == "web"
            await bob.until("escalation", session_id=sid)

            await alice.send(type="claim", session_id=sid)
            await alice.until("conversation", session_id=sid)
            assert (await customer.until("agent_joined"))["agent"]["name"] == "alice"
            await bob.send(type="claim", session_id=sid)
            assert (await bob.until("error"))["code"] == "already_claimed"

            await customer.send(type="message", text="How do I factory reset the hub?")
            said = await alice.until("customer_message", session_id=sid)
            assert said["text"] == "How do I factory reset the hub?"
            draft = await alice.until("suggestion", session_id=sid)
            assert draft["citations"][0]["doc_id"] == "hub-reset"
            await alice.send(type="message", session_id=sid, text=draft["text"])
            human = await customer.until("delta", source="human")
            assert human["text"] == draft["text"]

            await alice.send(type="release", session_id=sid)
            await customer.until("agent_left")
            await customer.send(type="message", text="thanks, anything else?")
            back = await customer.until("done")
            assert back["text"]  # the bot on B answers again
            for s in (alice, bob, customer):
                await s.close()
        finally:
            a.stop()
            b.stop()
