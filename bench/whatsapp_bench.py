"""WhatsApp: signed webhook POST → first outbound Graph API call, and sustained throughput.

The gateway runs as its own process (``duet serve`` on the sample knowledge base, see
:func:`bench.chat_bench.gateway_process`) with the WhatsApp channel pointed at a local Graph
API server in this process (``tests/fakes_whatsapp.py``: Meta's documented shapes). Both
clocks are this process's ``perf_counter``: the moment before the signed POST is sent, and
the moment the Graph API server reads a request. Two measurements:

* **latency** at customer pace: one message every ``GAP_S`` from a new number each; the
  first outbound call is the read receipt with the typing indicator (the customer sees two
  blue ticks and "typing…"); also the webhook's own ``200`` and the first reply message;
* **throughput**: ``SENDERS`` numbers at once, each posting ``PER_SENDER`` messages back to
  back, plus Meta-style retries of a tenth of the deliveries (half of them the identical
  body, which the inbox stream's own de-duplication drops; half re-enveloped with a new
  timestamp, which reach the consumer and its message-id claims). Every message must be
  processed exactly once: a read receipt for every message id, and the channel's
  ``accepted`` counter (``/metrics``) equal to the unique messages. The gateway's CPU time
  per message is read from ``/proc``: the turns the messages start (both agents) share the
  process with the webhook.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import time
from typing import Any

import httpx

from bench.chat_bench import QUESTIONS, GatewayProcess, gateway_process, phrase
from bench.common import save, summary
from tests.fakes_whatsapp import FakeGraph, signed, text_delivery

SECRET = "bench-app-secret"
WEBHOOK = "/channels/whatsapp/webhook"
LATENCY_MESSAGES = 150
GAP_S = 0.2
SENDERS = 100
PER_SENDER = 5
RETRY_SHARE = 0.1

_numbers = itertools.count(15557000001)
_ids = itertools.count(1)


def _wamid() -> str:
    return f"wamid.HBgLMTU1NTcwMDAwMDEVAgASGBQ{next(_ids):010d}=="


async def _first_call(graph: FakeGraph, check: Any, timeout_s: float = 60.0) -> float | None:
    try:
        await graph.wait_for(lambda: any(check(c) for c in graph.calls), timeout_s)
    except TimeoutError:
        return None
    return next(c.at for c in graph.calls if check(c))


async def latency(gw: GatewayProcess, graph: FakeGraph) -> dict[str, Any]:
    rng = random.Random(9)
    post_ms: list[float] = []
    first_call_ms: list[float] = []
    first_reply_ms: list[float] = []
    lost = 0

    async def one(http: httpx.AsyncClient) -> None:
        nonlocal lost
        sender, wamid = str(next(_numbers)), _wamid()
        body, headers = signed(text_delivery(sender, phrase(rng.choice(QUESTIONS), rng),
                                             wamid=wamid), SECRET)
        started = time.perf_counter()
        res = await http.post(WEBHOOK, content=body, headers=headers)
        post_ms.append((time.perf_counter() - started) * 1000)
        assert res.status_code == 200, res.text
        read = await _first_call(graph, lambda c: c.json.get("message_id") == wamid)
        reply = await _first_call(graph, lambda c: c.json.get("to") == sender
                                  and c.kind == "text" and c.status == 200)
        if read is None or reply is None:
            lost += 1
            return
        first_call_ms.append((read - started) * 1000)
        first_reply_ms.append((reply - started) * 1000)

    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http, \
            asyncio.TaskGroup() as group:
        for _ in range(LATENCY_MESSAGES):
            group.create_task(one(http))
            await asyncio.sleep(GAP_S)
    return {"messages": LATENCY_MESSAGES, "gap_s": GAP_S, "lost": lost,
            "webhook_200_ms": summary(post_ms),
            "post_to_first_graph_call_ms": summary(first_call_ms),
            "post_to_first_reply_message_ms": summary(first_reply_ms)}


transport_errors = 0


async def _deliver(http: httpx.AsyncClient, body: tuple[bytes, dict[str, str]]
                   ) -> httpx.Response:
    """POST a delivery as Meta does: a connection that fails is tried again (the same body;
    the gateway's inbox drops it if the first attempt did arrive)."""
    global transport_errors
    for attempt in range(5):
        try:
            return await http.post(WEBHOOK, content=body[0], headers=body[1])
        except httpx.TransportError:
            transport_errors += 1
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def _poll(check: Any, timeout_s: float) -> bool:
    """Whether ``check()`` came true within ``timeout_s`` (looked at five times a second)."""
    for _ in range(int(timeout_s / 0.2)):
        if check():
            return True
        await asyncio.sleep(0.2)
    return check()


async def _metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await http.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def throughput(gw: GatewayProcess, graph: FakeGraph) -> dict[str, Any]:
    rng = random.Random(11)
    calls_before = len(graph.calls)
    wamids: list[str] = []
    bodies: list[tuple[bytes, dict[str, str]]] = []
    originals: list[tuple[str, str, str]] = []  # (number, text, wamid)
    post_ms: list[float] = []
    senders = [str(next(_numbers)) for _ in range(SENDERS)]

    async def sender(http: httpx.AsyncClient, number: str) -> None:
        for _ in range(PER_SENDER):
            wamid = _wamid()
            wamids.append(wamid)
            text = phrase(rng.choice(QUESTIONS), rng)
            originals.append((number, text, wamid))
            body = signed(text_delivery(number, text, wamid=wamid), SECRET)
            bodies.append(body)
            started = time.perf_counter()
            res = await _deliver(http, body)
            post_ms.append((time.perf_counter() - started) * 1000)
            assert res.status_code == 200, res.text

    limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=60, limits=limits) as http:
        accepted_before = await _metric(http, "duet_whatsapp_inbound_total", outcome="accepted")
        dup_before = await _metric(http, "duet_whatsapp_inbound_total", outcome="duplicate")
        cpu_before = gw.cpu_s()
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for number in senders:
                group.create_task(sender(http, number))
        posted_s = time.perf_counter() - started
        picked = rng.sample(range(len(bodies)), int(len(bodies) * RETRY_SHARE))
        identical = [bodies[i] for i in picked[::2]]
        re_enveloped = [signed(text_delivery(originals[i][0], originals[i][1],
                                             wamid=originals[i][2],
                                             timestamp=int(time.time()) + 1), SECRET)
                        for i in picked[1::2]]
        retries = identical + re_enveloped
        async with asyncio.TaskGroup() as group:
            for body in retries:
                group.create_task(_deliver(http, body))
        wanted = set(wamids)

        def reads() -> dict[str, int]:
            counts: dict[str, int] = {}
            for call in graph.calls[calls_before:]:
                if call.kind == "read" and call.status == 200:
                    mid = call.json.get("message_id")
                    if mid in wanted:
                        counts[mid] = counts.get(mid, 0) + 1
            return counts

        await _poll(lambda: len(reads()) == len(wanted), 180)
        processed_s = max(c.at for c in graph.calls[calls_before:]) - started
        counts = reads()
        # let every last message's turn finish, then read the counters

        def answered_senders() -> int:
            texted = {c.json.get("to") for c in graph.calls[calls_before:]
                      if c.kind == "text" and c.status == 200}
            return len(texted & set(senders))

        await _poll(lambda: answered_senders() == len(senders), 180)
        answered = answered_senders()
        cpu_s = gw.cpu_s() - cpu_before  # the messages and the turns they started
        await asyncio.sleep(1.0)
        accepted = await _metric(http, "duet_whatsapp_inbound_total",
                                 outcome="accepted") - accepted_before
        duplicates = await _metric(http, "duet_whatsapp_inbound_total",
                                   outcome="duplicate") - dup_before
    unique = len(wanted)
    return {
        "senders": SENDERS, "messages_per_sender": PER_SENDER, "unique_messages": unique,
        "meta_retries_posted": len(retries),
        "webhook_posts_per_s": round((unique) / posted_s, 1),
        "webhook_200_ms": summary(post_ms),
        "processed_messages_per_s": round(len(counts) / processed_s, 1),
        "read_receipts_missing": unique - len(counts),
        "accepted": accepted,
        "retries_identical_body": len(identical), "retries_re_enveloped": len(re_enveloped),
        "retries_dropped_by_message_id": duplicates,
        "lost": unique - int(accepted), "doubled": int(accepted) - unique,
        "gateway_cpu_ms_per_message": round(cpu_s * 1000 / unique, 1),
        "webhook_posts_retried_after_a_transport_error": transport_errors,
        "machine_load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "senders_answered": answered,
    }


async def main() -> None:
    graph = await FakeGraph().start()
    env = {"DUET_WHATSAPP_ACCESS_TOKEN": graph.token,
           "DUET_WHATSAPP_PHONE_NUMBER_ID": graph.phone_number_id,
           "DUET_WHATSAPP_API_BASE": graph.base_url, "DUET_WHATSAPP_APP_SECRET": SECRET,
           "DUET_WHATSAPP_VERIFY_TOKEN": "bench-verify",
           "DUET_CHAT_RATE_BURST": "1000", "DUET_CHAT_RATE_PER_S": "1000"}
    try:
        async with gateway_process(**env) as gw:
            save("whatsapp_latency", await latency(gw, graph))
            save("whatsapp_throughput", await throughput(gw, graph))
    finally:
        await graph.close()


__all__ = ["main"]

if __name__ == "__main__":
    asyncio.run(main())
