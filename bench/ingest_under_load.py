"""Ingest lag while a chat load runs: the worker inside `duet serve` shares the 2 cores.

One gateway process (sample KB, ingest worker inside); small documents are posted with
``?wait=true`` one at a time, first on the idle gateway, then while 50 chat sessions talk.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from bench.chat_bench import gateway_process, run_sessions
from bench.common import save, summary
from bench.ingest_bench import _doc


async def _post_docs(base: str, n: int, rng: random.Random, first: int, pause_s: float,
                     stop: asyncio.Event | None = None) -> tuple[list[float], list[float]]:
    client_ms: list[float] = []
    worker_ms: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for i in range(n):
            if stop is not None and stop.is_set():
                break
            body = _doc(first + i, 60, rng).model_dump(mode="json")
            started = time.perf_counter()
            res = await http.post("/v1/documents", params={"wait": "true"}, json=body)
            client_ms.append((time.perf_counter() - started) * 1000)
            worker_ms.append(res.json()["lag_ms"])
            await asyncio.sleep(pause_s)
    return client_ms, worker_ms


async def main(sessions: int = 50) -> None:
    rng = random.Random(3)
    async with gateway_process(DUET_CHAT_RATE_BURST="1000", DUET_CHAT_RATE_PER_S="1000") as gw:
        idle_client, idle_worker = await _post_docs(gw.base_url, 60, rng, 0, 0.1)
        stop = asyncio.Event()

        async def chat() -> None:
            try:
                await run_sessions(gw.ws_url, sessions, 6, seed=9, think_s=(1.0, 3.0))
            finally:
                stop.set()

        chat_task = asyncio.create_task(chat())
        await asyncio.sleep(2.0)  # let the sessions ramp up
        load_client, load_worker = await _post_docs(gw.base_url, 400, rng, 1000, 0.1, stop)
        await chat_task
    save("ingest_lag_under_chat_load", {
        "chat_sessions": sessions, "think_time_s": [1.0, 3.0],
        "idle": {"published_to_retrievable_ms (client)": summary(idle_client),
                 "stream_to_applied_ms (worker)": summary(idle_worker)},
        "under_chat_load": {"published_to_retrievable_ms (client)": summary(load_client),
                            "stream_to_applied_ms (worker)": summary(load_worker)},
    })


if __name__ == "__main__":
    asyncio.run(main())
