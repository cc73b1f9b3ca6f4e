"""Supervisors: how fast the human side is under chat load, and what survives a SIGKILL.

``duet serve`` runs as its own process on the sample knowledge base, on a nats-server
started here (so it outlives the gateway). Every figure is client-side (``perf_counter``
in this one process, so the customer's and the supervisor's clocks are the same clock):

* **escalation → console**: 50 customers chat (questions with think time); 25 of them ask
  for a person in the middle ("I want to talk to a real person": the bot answers the turn,
  then escalates). Measured from the customer's socket receiving that turn's ``done`` to
  the supervisor's socket receiving ``escalation`` (the escalation follows the ``done``);
  also how far the console is ahead of the customer's own ``escalated`` event, and the
  whole path from the customer's message (which includes the bot's answer under load).
* **supervisor message → customer**: the supervisor claims each escalated conversation and
  sends a few messages while the others keep chatting; from sending ``message`` to the
  customer's socket receiving the ``human`` delta. Also ``claim`` → ``conversation``.
* **recovery**: 20 waiting and 5 claimed conversations (each claimed one with a person's
  message), then SIGKILL and restart on the same NATS and data directory: every
  conversation back (queue, claims, transcripts), and the time it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.chat_bench import QUESTIONS, SAMPLE_DOCS, phrase
from bench.common import save, summary
from core.natsd import EmbeddedNats, free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-supervisor-token-0123456789"
CUSTOMERS = 50
ESCALATING = 25
MESSAGES_EACH = 4


class Serve:
    """``duet serve`` on a given NATS and data directory."""

    def __init__(self, data_dir: Path, nats_url: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
        env |= {"DUET_DATA_DIR": str(data_dir), "DUET_PORT": str(self.port),
                "DUET_NATS_URL": nats_url, "DUET_LOG_LEVEL": "WARNING",
                "DUET_LOAD_SAMPLE_KB": "true", "DUET_CHAT_RATE_BURST": "1000",
                "DUET_CHAT_RATE_PER_S": "1000", "DUET_SUPERVISOR_TOKENS": f"bench:{TOKEN}"}
        self.log = data_dir.parent / f"serve-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "duet_cli", "serve"], env=env,
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    async def ready(self, *, all_hot: bool, timeout_s: float = 240.0) -> float:
        """Seconds until healthy (and, with ``all_hot``, every sample article indexed)."""
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.base, timeout=5.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited; see {self.log}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200 and (
                            not all_hot or await _all_hot(http)):
                        return time.perf_counter() - started
                await asyncio.sleep(0.05)
        raise TimeoutError("gateway not ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


async def _all_hot(http: httpx.AsyncClient) -> bool:
    for doc_id in SAMPLE_DOCS:
        res = await http.get(f"/v1/documents/{doc_id}")
        if res.status_code != 200 or res.json().get("tier") != "hot":
            return False
    return True


class Socket:
    """A websocket whose events are read by one task and stamped on arrival."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> Socket:
        return cls(await connect(url, max_size=None))

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                await self.events.put((time.perf_counter(), json.loads(raw)))

    async def send(self, **message: Any) -> float:
        stamp = time.perf_counter()
        await self.ws.send(json.dumps(message))
        return stamp

    async def until(self, kind: str, timeout_s: float = 120.0, **match: Any
                    ) -> tuple[float, dict[str, Any]]:
        async with asyncio.timeout(timeout_s):
            while True:
                stamp, item = await self.events.get()
                if item["type"] == kind and all(item.get(k) == v for k, v in match.items()):
                    return stamp, item

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()


async def customer(gw: Serve) -> tuple[Socket, dict[str, Any]]:
    sock = await Socket.open(f"{gw.ws}/v1/chat")
    await sock.send(type="hello")
    return sock, (await sock.until("session"))[1]


class Console:
    """A supervisor socket that stamps every escalation and conversation by session."""

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.seen: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.arrived = asyncio.Condition()
        self.task = asyncio.get_running_loop().create_task(self._route())
        self.first_queue: dict[str, Any] | None = None

    @classmethod
    async def open(cls, gw: Serve) -> Console:
        return cls(await Socket.open(f"{gw.ws}/v1/supervisor?token={TOKEN}"))

    async def _route(self) -> None:
        while True:
            stamp, item = await self.sock.events.get()
            key = (item["type"], item.get("session_id") or "")
            if item["type"] == "queue" and self.first_queue is None:
                self.first_queue = item
            if key not in self.seen:
                self.seen[key] = (stamp, item)
            async with self.arrived:
                self.arrived.notify_all()

    async def wait(self, kind: str, session_id: str = "", timeout_s: float = 120.0
                   ) -> tuple[float, dict[str, Any]]:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: (kind, session_id) in self.seen)
        return self.seen[(kind, session_id)]

    async def close(self) -> None:
        self.task.cancel()
        await self.sock.close()


async def _chatter(gw: Serve, rng: random.Random, stop: asyncio.Event) -> int:
    """A customer asking questions with think time until ``stop``; returns turns done."""
    sock, _ = await customer(gw)
    turns = 0
    try:
        while not stop.is_set():
            await sock.send(type="message", text=phrase(rng.choice(QUESTIONS), rng))
            await sock.until("done")
            turns += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5))
    finally:
        await sock.close()
    return turns


async def _escalating(gw: Serve, console: Console, rng: random.Random,
                      figures: dict[str, list[float]]) -> None:
    """A customer who chats, asks for a person, and talks with the supervisor."""
    sock, opened = await customer(gw)
    sid = opened["session_id"]
    try:
        await asyncio.sleep(rng.uniform(0, 4))
        await sock.send(type="message", text=phrase(rng.choice(QUESTIONS), rng))
        await sock.until("done")
        await asyncio.sleep(rng.uniform(0.5, 2))
        asked = await sock.send(type="message", text="This isn't helping, I want to talk "
                                                     "to a real person")
        done_at, _ = await sock.until("done")  # the turn answers, then escalates
        escalated_at, _ = await sock.until("escalated")
        shown_at, _ = await console.wait("escalation", sid)
        figures["turn_done_to_console_ms"].append((shown_at - done_at) * 1000)
        figures["console_ahead_of_customer_escalated_ms"].append(
            (escalated_at - shown_at) * 1000)
        figures["customer_message_to_console_ms"].append((shown_at - asked) * 1000)
        claimed = await console.sock.send(type="claim", session_id=sid)
        got, _ = await console.wait("conversation", sid)
        figures["claim_to_conversation_ms"].append((got - claimed) * 1000)
        await sock.until("agent_joined")
        for i in range(MESSAGES_EACH):
            text = f"Hello from the team ({i}) for {sid[:6]}"
            sent = await console.sock.send(type="message", session_id=sid, text=text)
            arrived, _ = await sock.until("delta", source="human", text=text)
            figures["supervisor_message_to_customer_ms"].append((arrived - sent) * 1000)
            await asyncio.sleep(rng.uniform(0.1, 0.4))
        await console.sock.send(type="release", session_id=sid)
        await sock.until("agent_left")
    finally:
        await sock.close()


async def under_load(gw: Serve) -> dict[str, Any]:
    rng = random.Random(7)
    console = await Console.open(gw)
    await console.wait("queue")
    figures: dict[str, list[float]] = {k: [] for k in (
        "turn_done_to_console_ms", "console_ahead_of_customer_escalated_ms",
        "customer_message_to_console_ms",
        "claim_to_conversation_ms", "supervisor_message_to_customer_ms")}
    stop = asyncio.Event()
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        chatters = [group.create_task(_chatter(gw, random.Random(rng.random()), stop))
                    for _ in range(CUSTOMERS - ESCALATING)]
        escalations = [group.create_task(_escalating(gw, console, random.Random(rng.random()),
                                                     figures))
                       for _ in range(ESCALATING)]
        await asyncio.gather(*escalations)
        stop.set()
    await console.close()
    return {"customers": CUSTOMERS, "escalating": ESCALATING,
            "wall_s": round(time.perf_counter() - started, 1),
            "chat_turns_meanwhile": sum(t.result() for t in chatters),
            **{k: summary(v) for k, v in figures.items()}}


async def recovery(gw: Serve, data_dir: Path, nats_url: str) -> tuple[dict[str, Any], Serve]:
    console = await Console.open(gw)
    await console.wait("queue")
    waiting: list[str] = []
    claimed: list[str] = []
    sockets = []
    for i in range(25):
        sock, opened = await customer(gw)
        sockets.append(sock)
        sid = opened["session_id"]
        await sock.send(type="handoff", reason=f"bench customer {i}")
        await sock.until("escalated")
        await console.wait("escalation", sid)
        (claimed if i < 5 else waiting).append(sid)
    for sid in claimed:
        await console.sock.send(type="claim", session_id=sid)
        await console.wait("conversation", sid)
        await console.sock.send(type="message", session_id=sid, text=f"kept {sid}")
    for sock, sid in zip(sockets[:5], claimed, strict=True):
        await sock.until("delta", source="human", text=f"kept {sid}")
    await console.close()
    for sock in sockets:
        await sock.close()

    killed = time.perf_counter()
    gw.kill()
    again = Serve(data_dir, nats_url)
    healthy_s = await again.ready(all_hot=False)
    reconnect = time.perf_counter()
    console = await Console.open(again)
    _, snapshot = await console.wait("queue")
    views = [await console.wait("conversation", sid) for sid in claimed]
    full = time.perf_counter()
    back_waiting = [c["session_id"] for c in snapshot["waiting"]]
    back_claimed = sorted(c["session_id"] for c in snapshot["mine"])
    transcripts_ok = sum(
        any(line["role"] == "human" and line["text"] == f"kept {view['session_id']}"
            for line in view["transcript"])
        for _, view in views)
    await console.close()
    return {"waiting_before": len(waiting), "claimed_before": len(claimed),
            "waiting_back": sum(s in back_waiting for s in waiting),
            "waiting_order_kept": [s for s in back_waiting if s in waiting] == waiting,
            "claimed_back": sum(s in back_claimed for s in claimed),
            "claimed_transcripts_with_the_persons_message": transcripts_ok,
            "all_back": (sum(s in back_waiting for s in waiting) == len(waiting)
                         and back_claimed == sorted(claimed) and transcripts_ok == len(claimed)),
            "restart_to_healthy_s": round(healthy_s, 2),
            "console_reconnect_to_full_state_ms": round((full - reconnect) * 1000, 1),
            "kill_to_full_state_s": round(full - killed, 2)}, again


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="duet-supervisor-bench-") as tmp:
        root = Path(tmp)
        async with EmbeddedNats(root / "nats") as nats:
            gw = Serve(root / "data", nats.url)
            try:
                ready_s = await gw.ready(all_hot=True)
                print(f"gateway ready with the sample knowledge base in {ready_s:.1f} s",
                      flush=True)
                load = await under_load(gw)
                save("supervisor_latency", load)
                report, gw = await recovery(gw, root / "data", nats.url)
                save("supervisor_recovery", report)
            finally:
                gw.stop()


__all__ = ["main"]

if __name__ == "__main__":
    asyncio.run(main())
