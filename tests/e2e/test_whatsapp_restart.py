"""WhatsApp deliveries outlive their gateway process: real ``duet serve`` processes.

Deliveries are answered ``200`` only once they are in JetStream; the gateway is SIGKILLed
right after Meta got its answers (before or while processing them) and started again: every
message is answered, exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from core.natsd import EmbeddedNats
from tests.fakes import FakeLLM
from tests.fakes_whatsapp import FakeGraph, signed, text_delivery
from tests.serve import ServeProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
SECRET = "restart-app-secret"
DOC = {"event_type": "CREATE", "doc_id": "hub-reset", "version": 1,
       "content": "# Resetting the hub\n\n## Factory reset\nHold the reset button for 15 seconds "
                  "until the LED flashes red, then wait 5 minutes for the hub to restart.",
       "metadata": {"title": "Resetting the hub", "acl": ["public"], "source": "cms"}}


def start_gateway(data_dir: Path, nats_url: str, graph: FakeGraph, llm: FakeLLM) -> ServeProcess:
    """A `duet serve` process with WhatsApp pointed at the local Graph API server."""
    return ServeProcess(
        data_dir, nats_url, DUET_LLM_BASE_URL=llm.base_url, DUET_LLM_FIRST_TOKEN_TIMEOUT_S="10",
        DUET_WHATSAPP_ACCESS_TOKEN=graph.token,
        DUET_WHATSAPP_PHONE_NUMBER_ID=graph.phone_number_id,
        DUET_WHATSAPP_API_BASE=graph.base_url, DUET_WHATSAPP_APP_SECRET=SECRET,
        DUET_WHATSAPP_ACK_DELAY_S="0.2")


async def test_deliveries_accepted_before_a_sigkill_are_answered_once_after_it(
        tmp_path: Path) -> None:
    graph = await FakeGraph().start()
    llm = FakeLLM()
    llm.mode, llm.delay_s = "slow_first_token", 3.0  # turns are still running at the kill
    await llm.start()
    senders = [f"1555020{i:04d}" for i in range(3)]
    try:
        async with EmbeddedNats(tmp_path / "nats") as nats:
            first = start_gateway(tmp_path / "data", nats.url, graph, llm)
            try:
                await first.ready()
                async with httpx.AsyncClient(base_url=first.base, timeout=60) as http:
                    res = await http.post("/v1/documents", params={"wait": "true"}, json=DOC)
                    assert res.status_code == 200, res.text
                    for i, sender in enumerate(senders):
                        body, headers = signed(text_delivery(
                            sender, "How do I factory reset the hub?",
                            wamid=f"wamid.RESTART{i}"), SECRET)
                        res = await http.post("/channels/whatsapp/webhook", content=body,
                                              headers=headers)
                        assert res.status_code == 200
            finally:
                first.kill()  # right after Meta got its 200s
            answered_before = {s for s in senders
                               if any("15 seconds" in t for t in graph.texts(s))}
            read_before = sum(1 for c in graph.calls if c.kind == "read")

            second = start_gateway(tmp_path / "data", nats.url, graph, llm)
            try:
                await second.ready()
                llm.mode = "ok"

                def answered(sender: str) -> list[str]:
                    return [t for t in graph.texts(sender) if "15 seconds" in t]

                await graph.wait_for(lambda: all(answered(s) for s in senders), 120)
                await asyncio.sleep(2.0)  # anything doubled would have been sent by now
                for sender in senders:
                    assert len(answered(sender)) == 1, (sender, graph.texts(sender))
                    assert len(graph.texts(sender)) <= 2  # at most one acknowledgment
                    assert sum(1 for c in graph.calls if c.kind == "read"
                               and c.json["message_id"].startswith("wamid.RESTART")
                               and c.status == 200) >= 1
                print(f"before the kill: {read_before} of {len(senders)} messages read, "
                      f"{len(answered_before)} answered")
            finally:
                second.stop()
    finally:
        await llm.close()
        await graph.close()
