"""Flood: one address pushes past every limit while an honest customer on another asks.

A real ``duet serve`` (:func:`bench.chat_bench.gateway_process`, sample knowledge base,
default limits) is flooded from 127.0.0.1 in three phases, each ``--seconds`` long, after a
baseline with no flood:

* **connections** — websockets opened as fast as 64 at a time can, each kept open;
* **session opens** — ``POST /v1/chat`` without a session, 32 at a time (a new session per
  message: the trick that bypassed the per-session rate limit);
* **messages** — 20 open chat sessions each sending a message every 20 ms.

All the while an honest customer on 127.0.0.2 (all of 127/8 is loopback on Linux) asks
questions on one websocket session, one after another. Reported per phase: the honest
customer's first answer (``perf_counter`` from send to the first ``answer`` delta, or its
``done`` when there is none) p50/p99 in ms, what the flood got through and what was refused
(``duet_refusals_total`` deltas from ``/metrics``), the gateway's CPU seconds in the phase
(and per refusal: an upper bound, the honest turns and admitted flood count too), and its
RSS (``/proc``).

``python -m bench.flood_bench --seconds 5`` for a smoke run; ``python -m bench.run flood``
runs it with the defaults (20 s a phase).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.chat_bench import QUESTIONS, GatewayProcess, gateway_process, phrase
from bench.common import save, summary
from core.settings import Settings

__all__ = ["DEFAULT_LIMITS", "Honest", "main", "refusal_counts", "rss_mib"]

#: The limits as shipped (gateway_process lifts the per-address ones for load generators).
DEFAULT_LIMITS = {f"DUET_{name.upper()}": str(Settings.model_fields[name].default) for name in (
    "conn_per_address", "sessions_per_address", "session_open_burst", "session_open_rate_per_s",
    "address_message_burst", "address_message_rate_per_s")}

FLOOD = "127.0.0.1"
HONEST = "127.0.0.2"
_REFUSAL = re.compile(r'^duet_refusals_total\{limit="([a-z_]+)"\} ([0-9.e+]+)$', re.M)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def refusal_counts(http: httpx.AsyncClient) -> dict[str, float]:
    """``duet_refusals_total`` by limit, from ``/metrics``."""
    text = (await http.get("/metrics")).text
    return {limit: float(value) for limit, value in _REFUSAL.findall(text)}


async def ws(gw: GatewayProcess, source: str) -> ClientConnection:
    """A chat websocket from ``source``."""
    return await connect(f"{gw.ws_url}/v1/chat", local_addr=(source, 0), open_timeout=30,
                         max_queue=None)


class Honest:
    """A customer asking one question after another on one session, timing first answers."""

    def __init__(self, gw: GatewayProcess, source: str = HONEST, *, seed: int = 11) -> None:
        self.gw = gw
        self.source = source
        self.rng = random.Random(seed)
        self.first_answer_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> Honest:
        self._ws = await ws(self.gw, self.source)
        await self._ws.send(json.dumps({"type": "hello"}))
        opened = json.loads(await self._ws.recv())
        assert opened["type"] == "session", opened
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def ask(self) -> None:
        """One question; its first answer time is kept (an error is counted instead)."""
        assert self._ws is not None
        started = time.perf_counter()
        await self._ws.send(json.dumps({"type": "message",
                                        "text": phrase(self.rng.choice(QUESTIONS), self.rng)}))
        first = None
        while True:
            item = json.loads(await asyncio.wait_for(self._ws.recv(), 60))
            kind = item["type"]
            if kind == "delta" and item.get("source") == "answer" and first is None:
                first = (time.perf_counter() - started) * 1000
            elif kind == "error":
                self.errors[item["code"]] += 1
                return
            elif kind == "done":
                if first is None:
                    first = (time.perf_counter() - started) * 1000
                self.first_answer_ms.append(first)
                return

    async def keep_asking(self, until: float, pause_s: float = 1.0) -> None:
        """Ask until ``until`` (``time.monotonic``)."""
        while time.monotonic() < until:
            await self.ask()
            await asyncio.sleep(pause_s)

    def take(self) -> dict[str, Any]:
        """The figures since the last take."""
        out = {"first_answer_ms": summary(self.first_answer_ms) if self.first_answer_ms
               else None, "errors": dict(self.errors)}
        self.first_answer_ms, self.errors = [], Counter()
        return out


async def _flood_connections(gw: GatewayProcess, until: float, held: list[ClientConnection],
                             counts: Counter[str]) -> None:
    async def one() -> None:
        while time.monotonic() < until:
            try:
                sock = await ws(gw, FLOOD)
            except (OSError, InvalidStatus, TimeoutError):
                counts["failed"] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                await asyncio.wait_for(sock.recv(), 0.5)
            except TimeoutError:
                counts["held"] += 1
                held.append(sock)  # kept open until the phase ends
                continue
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                counts["refused_1013" if code == 1013 else f"closed_{code}"] += 1
            await sock.close()

    async with asyncio.TaskGroup() as group:
        for _ in range(64):
            group.create_task(one())


async def _flood_opens(gw: GatewayProcess, until: float, counts: Counter[str]) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=FLOOD)
    async with httpx.AsyncClient(base_url=gw.base_url, transport=transport, timeout=60) as http:

        async def one() -> None:
            while time.monotonic() < until:
                try:
                    res = await http.post("/v1/chat", json={"text": "hello"})
                    counts[str(res.status_code)] += 1
                except httpx.HTTPError:
                    counts["failed"] += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(32):
                group.create_task(one())


async def _flood_messages(gw: GatewayProcess, until: float, counts: Counter[str]) -> None:
    async def one(i: int) -> None:
        try:
            sock = await ws(gw, FLOOD)
            await sock.send(json.dumps({"type": "hello"}))
            opened = json.loads(await sock.recv())
        except (OSError, InvalidStatus, ConnectionClosed):
            counts["no_socket"] += 1
            return
        if opened["type"] != "session":
            counts[f"no_session_{opened.get('code')}"] += 1
            await sock.close()
            return

        async def drain() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in sock:
                    item = json.loads(raw)
                    if item["type"] == "user_message":
                        counts["accepted"] += 1
                    elif item["type"] == "error":
                        counts[f"error_{item['code']}"] += 1

        reader = asyncio.create_task(drain())
        try:
            while time.monotonic() < until:
                await sock.send(json.dumps({"type": "message", "text": f"flood {i}"}))
                counts["sent"] += 1
                await asyncio.sleep(0.02)
        except ConnectionClosed:
            counts["closed"] += 1
        finally:
            await asyncio.sleep(0.5)
            await sock.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async with asyncio.TaskGroup() as group:
        for i in range(20):
            group.create_task(one(i))


@contextlib.asynccontextmanager
async def _rss_peak(pid: int) -> AsyncIterator[list[float]]:
    peak = [rss_mib(pid)]

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.5)
            peak[0] = max(peak[0], rss_mib(pid))

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def main(seconds: float = 20.0) -> None:
    """Baseline, then each flood for ``seconds`` with the honest customer asking."""
    results: dict[str, Any] = {"seconds_per_phase": seconds}
    async with gateway_process(**DEFAULT_LIMITS) as gw, \
            httpx.AsyncClient(base_url=gw.base_url, timeout=30) as probe, \
            Honest(gw) as honest:
        for _ in range(3):
            await honest.ask()  # warm-up
        honest.take()
        results["rss_start_mib"] = rss_mib(gw.pid)
        phases = {"baseline": None, "connections": _flood_connections,
                  "session_opens": _flood_opens, "messages": _flood_messages}
        for name, flood in phases.items():
            before = await refusal_counts(probe)
            counts: Counter[str] = Counter()
            held: list[ClientConnection] = []
            cpu0 = gw.cpu_s()
            until = time.monotonic() + seconds
            async with _rss_peak(gw.pid) as peak:
                async with asyncio.TaskGroup() as group:
                    group.create_task(honest.keep_asking(until))
                    if flood is _flood_connections:
                        group.create_task(flood(gw, until, held, counts))
                    elif flood is not None:
                        group.create_task(flood(gw, until, counts))
                health = (await probe.get("/healthz")).status_code
            cpu_s = gw.cpu_s() - cpu0
            after = await refusal_counts(probe)
            for sock in held:
                await sock.close()
            refused = {k: after[k] - before.get(k, 0.0) for k in after
                       if after[k] != before.get(k, 0.0)}
            results[name] = {
                "honest": honest.take(), "flood": dict(counts), "refusals": refused,
                "gateway_cpu_s": round(cpu_s, 2),
                "gateway_cpu_ms_per_refusal": round(1000 * cpu_s / sum(refused.values()), 3)
                if refused else None,
                "healthz_during_flood": health,
                "rss_peak_mib": peak[0], "rss_end_mib": rss_mib(gw.pid),
            }
            print(f"{name}: {json.dumps(results[name])}", flush=True)
            await asyncio.sleep(2)  # the flood's connections close
    save("flood", results)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(**vars(_args())))
