"""Soak: 200 sessions at a customer's pace for a while, then idle; does memory come back?

A real ``duet serve`` (:func:`bench.chat_bench.gateway_process`, sample knowledge base,
durable sessions) is warmed up with a few turns; then ``--sessions`` customers (default
200, spread over 127.0.1.x source addresses, four per address, as many households would be)
each hold a chat websocket and ask a question every 15–45 s for ``--minutes`` (default 10).
Then every customer leaves and the gateway idles for ``--idle-minutes`` (default 7: past
``DUET_SESSION_UNLOAD_S``, 5 minutes, when idle durable sessions leave memory).

The RSS of the ``duet serve`` process is sampled every 5 s throughout. Reported: the curve,
start (after warm-up) / peak / end, the sessions held (``duet_sessions_held``) at the end,
and whether RSS returned within 10 % of its start (the reaper returns freed heap to the
system after letting many sessions go, see docs/limits.md); ``--fast`` shortens
the shed/unload times (``DUET_SESSION_SHED_S=5``, ``DUET_SESSION_UNLOAD_S=15``) for a quick
look.

``python -m bench.soak_bench --minutes 1 --idle-minutes 0.5 --fast`` for a smoke run;
``python -m bench.run soak`` runs the defaults (~18 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import time
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bench.chat_bench import QUESTIONS, GatewayProcess, gateway_process, phrase
from bench.common import save, summary
from bench.flood_bench import DEFAULT_LIMITS, Honest, rss_mib, ws

__all__ = ["main"]

_HELD = re.compile(r"^duet_sessions_held ([0-9.e+]+)$", re.M)


async def _customer(gw: GatewayProcess, i: int, until: float, first_answer_ms: list[float],
                    errors: list[str]) -> None:
    rng = random.Random(i)
    await asyncio.sleep(rng.uniform(0, 10))  # arrivals spread over the first seconds
    source = f"127.0.1.{i // 4 + 1}"
    try:
        sock: ClientConnection = await ws(gw, source)
    except Exception as exc:
        errors.append(type(exc).__name__)
        return
    try:
        await sock.send(json.dumps({"type": "hello"}))
        json.loads(await sock.recv())
        while time.monotonic() < until:
            started = time.perf_counter()
            await sock.send(json.dumps({"type": "message",
                                        "text": phrase(rng.choice(QUESTIONS), rng)}))
            first = None
            while True:
                item = json.loads(await asyncio.wait_for(sock.recv(), 120))
                if item["type"] == "delta" and item.get("source") == "answer" and first is None:
                    first = (time.perf_counter() - started) * 1000
                elif item["type"] == "error":
                    errors.append(item["code"])
                    break
                elif item["type"] == "done":
                    first_answer_ms.append(first if first is not None
                                           else (time.perf_counter() - started) * 1000)
                    break
            await asyncio.sleep(min(rng.uniform(15, 45), max(0.0, until - time.monotonic())))
    except (ConnectionClosed, TimeoutError) as exc:
        errors.append(type(exc).__name__)
    finally:
        await sock.close()


async def _held(http: httpx.AsyncClient) -> float | None:
    found = _HELD.search((await http.get("/metrics")).text)
    return float(found.group(1)) if found else None


async def main(minutes: float = 10.0, idle_minutes: float = 7.0, sessions: int = 200,
               fast: bool = False) -> None:
    """Run the soak and save ``bench-results/soak.json``."""
    env = dict(DEFAULT_LIMITS)  # four customers an address: the shipped limits hold
    if fast:
        env |= {"DUET_SESSION_SHED_S": "5", "DUET_SESSION_UNLOAD_S": "15"}
    curve: list[tuple[float, float, str]] = []
    first_answer_ms: list[float] = []
    errors: list[str] = []
    async with gateway_process(**env) as gw, \
            httpx.AsyncClient(base_url=gw.base_url, timeout=30) as probe:
        async with Honest(gw, "127.0.0.9") as warm:
            for _ in range(5):
                await warm.ask()
        start = rss_mib(gw.pid)
        t0 = time.monotonic()
        phase = ["active"]

        async def sample() -> None:
            while True:
                curve.append((round(time.monotonic() - t0, 1), rss_mib(gw.pid), phase[0]))
                await asyncio.sleep(5)

        sampler = asyncio.create_task(sample())
        try:
            until = t0 + minutes * 60
            async with asyncio.TaskGroup() as group:
                for i in range(sessions):
                    group.create_task(_customer(gw, i, until, first_answer_ms, errors))
            held_after_active = await _held(probe)
            phase[0] = "idle"
            await asyncio.sleep(idle_minutes * 60)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        end = rss_mib(gw.pid)
        held_end = await _held(probe)
    peak = max(r for _, r, _ in curve)
    results: dict[str, Any] = {
        "sessions": sessions, "minutes": minutes, "idle_minutes": idle_minutes, "fast": fast,
        "turns": len(first_answer_ms),
        "first_answer_ms": summary(first_answer_ms) if first_answer_ms else None,
        "errors": {e: errors.count(e) for e in set(errors)},
        "rss_start_mib": start, "rss_peak_mib": peak, "rss_end_mib": end,
        "returned_within_10_percent": end <= start * 1.10,
        "sessions_held_after_active": held_after_active, "sessions_held_end": held_end,
        "rss_curve": [{"t_s": t, "rss_mib": r, "phase": p} for t, r, p in curve],
    }
    save("soak", results)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="active phase length")
    parser.add_argument("--idle-minutes", type=float, default=7.0, help="idle phase length")
    parser.add_argument("--sessions", type=int, default=200, help="customers at once")
    parser.add_argument("--fast", action="store_true",
                        help="shed after 5 s and unload after 15 s instead of 60 s / 300 s")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(**vars(_args())))
