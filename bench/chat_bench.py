"""Chat: first acknowledgment, first answer and ``done`` over loopback websockets.

The gateway runs as its own process (``python -m duet_cli serve``) on the bundled sample
knowledge base, so the client's CPU use does not share its event loop (it still shares
the machine's cores). Every figure is client-side: ``perf_counter`` from sending the
message to receiving the event. Three measurements:

* **latency** at 1, 50 and 200 concurrent sessions, each asking a few of ``QUESTIONS``
  (phrased differently each time, see :func:`phrase`) with a short think time, after one
  unmeasured warm-up pass; with the gateway's CPU time per turn (from ``/proc``);
* **prefetch** on scripted follow-ups (``FOLLOW_UPS``): turn 1 asks about an article,
  1 s later turn 2 asks what one of its journey articles or another of its sections
  answers; a hit is ``done.prefetch_hit``;
* **sequential baseline**: the same questions answered in-process by the same
  ``KnowledgeBase`` + ``ExtractiveGenerator`` without streaming or an acknowledgment
  (embed → search → generate the whole answer), against the gateway's first visible text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.common import save, scratch_runtime, summary
from core.natsd import free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_KB = ROOT / "configs" / "sample_kb"
SAMPLE_DOCS = sorted(p.stem for p in SAMPLE_KB.glob("*.md"))
LEVELS = (1, 50, 200)

#: Customer questions over the sample knowledge base, one or two per article.
QUESTIONS = [
    "How long do I have to return a bulb I bought?",
    "Is there a restocking fee if I already opened the box?",
    "How do I reset my Lumora bulb?",
    "My new bulb won't pair with the hub, what should I do?",
    "How much does standard shipping cost?",
    "Do you ship to Canada?",
    "How can I track my order?",
    "Can I cancel my order after I placed it?",
    "What payment methods do you accept?",
    "How much is Lumora Plus per month?",
    "How do I cancel my Lumora Plus subscription?",
    "I forgot my password, how do I reset it?",
    "How do I turn on two-factor authentication?",
    "How do I set up the Lumora hub?",
    "How do I factory reset the hub?",
    "What does a blinking amber light on the hub mean?",
    "How do I install the light strip under my kitchen cabinets?",
    "Can I cut the light strip to length?",
    "How long does the motion sensor battery last?",
    "How do I pair the dimmer switch?",
    "Why does the app say my bulb is unreachable?",
    "How do I connect my lights to Alexa?",
    "Does Lumora work with Apple Home and Siri?",
    "How do I create a schedule for my lights?",
    "Do my automations still work when the internet is down?",
    "How do I update the hub firmware?",
    "What data does Lumora collect about me?",
    "How do I download a copy of my data?",
    "What are your support hours?",
    "What is the phone number for customer support?",
    "How long is the warranty on the bulbs?",
    "How do I file a warranty claim for a flickering bulb?",
    "When will my card be charged for my order?",
    "How long does it take to get my refund?",
    "My package says delivered but I never got it.",
    "How much does the starter kit cost?",
    "Can I change the shipping address on my order?",
    "What is Vacation Mode?",
    "How many devices can one hub support?",
    "How do I delete my Lumora account?",
]

#: (turn 1, turn 2, articles that answer turn 2): turn 2 is answered by a journey article
#: of turn 1's article (configs/journeys.yaml) or by another section of the same one.
FOLLOW_UPS = [
    ("How long do I have to return a product?", "And how long does the refund take?",
     ["returns-policy"]),
    ("Can I return a bulb I already opened?", "How do I start the return?",
     ["returns-policy"]),
    ("How long is the warranty on the hub?", "How do I file a warranty claim?", ["warranty"]),
    ("What does the warranty cover?", "Can I return it for a refund instead?",
     ["warranty", "returns-policy"]),
    ("How much does expedited shipping cost?", "How do I track my order once it ships?",
     ["order-tracking", "shipping-options"]),
    ("Do you ship to Hawaii?", "What about shipping to Canada?",
     ["international-shipping"]),
    ("Where do I find my order number?", "Can I still cancel that order?",
     ["cancel-or-change-order"]),
    ("My tracking hasn't updated in four days.", "What if it says delivered but it isn't here?",
     ["order-tracking"]),
    ("How do I cancel my order?", "When is the hold on my card released?",
     ["cancel-or-change-order", "billing-and-payments"]),
    ("How much does the Lumora hub cost?", "Is shipping free?", ["shipping-options"]),
    ("How much is Lumora Plus?", "What do I get with it?", ["lumora-plus"]),
    ("What does Lumora Plus include?", "How do I cancel it?", ["lumora-plus"]),
    ("Is there a free trial of Lumora Plus?", "What happens if my renewal payment fails?",
     ["billing-and-payments"]),
    ("What payment methods do you accept?", "When exactly is my card charged?",
     ["billing-and-payments"]),
    ("I forgot my password.", "How do I set up two-factor authentication?",
     ["two-factor-authentication"]),
    ("My account is locked after too many attempts.", "How do I change my email address?",
     ["account-and-password-reset"]),
    ("How do I turn on two-factor authentication?", "What if I lose my phone?",
     ["two-factor-authentication"]),
    ("How do I set up the hub?", "Now how do I pair my bulbs to it?", ["pairing-bulbs"]),
    ("What do the hub LED colors mean?", "How do I factory reset the hub?", ["hub-reset"]),
    ("How do I restart the hub?", "What happens after a factory reset?", ["hub-reset"]),
    ("How do I pair a new bulb?", "And if it won't pair, how do I reset the bulb?",
     ["bulb-reset", "pairing-bulbs"]),
    ("How do I reset my bulb?", "What do I do after the reset?", ["bulb-reset"]),
    ("How do I set up the motion sensor?", "How long does its battery last?",
     ["motion-sensor-setup"]),
    ("How do I pair the dimmer switch?", "Can I use it in an automation?",
     ["automations-and-schedules", "dimmer-switch-setup"]),
    ("How do I connect Alexa to my lights?", "Does it work with Siri too?",
     ["voice-assistants"]),
    ("Do automations work without internet?", "How does Vacation Mode work?",
     ["automations-and-schedules"]),
    ("How do I update the hub firmware?", "What if the update fails?", ["firmware-updates"]),
    ("All my devices show offline in the app.", "How do I reset the hub?",
     ["hub-reset", "app-troubleshooting"]),
    ("What data does Lumora collect?", "How do I download my data?", ["privacy-and-data"]),
]


#: Ways customers open and close a message. Every turn's text gets a random pair, so
#: that the embedder's cache of exact texts (queries do repeat in production, but not
#: 600 times out of 40) does not make the measured turns cheaper than real ones.
OPENERS = ("", "", "Hi, ", "Hello! ", "Hey, ", "Quick question: ", "Good morning. ",
           "Hi there, ", "Hello, ", "Sorry to bother you, ", "Hi team, ", "Hey there! ",
           "Good afternoon, ", "One question: ", "Hello again. ")
CLOSERS = ("", "", "", " Thanks!", " Thank you.", " Thanks in advance.", " Please help.",
           " Cheers.", " Thanks a lot.")


def phrase(question: str, rng: random.Random) -> str:
    """``question`` as one customer might type it (a random greeting and sign-off)."""
    opener, closer = rng.choice(OPENERS), rng.choice(CLOSERS)
    if opener.endswith(", ") and not question.startswith(("I ", "I'")):
        question = question[0].lower() + question[1:]
    return f"{opener}{question}{closer}"


@dataclass
class TurnTiming:
    """One turn as the client saw it."""

    text: str
    ack_ms: float | None = None
    answer_ms: float | None = None
    done_ms: float | None = None
    server: dict[str, Any] = field(default_factory=dict)
    prefetch_hit: bool | None = None
    decision: str | None = None
    cited: list[str] = field(default_factory=list)
    rewritten: str | None = None
    reply: str = ""
    error: str | None = None

    @property
    def first_visible_ms(self) -> float | None:
        """When the customer first saw text: the ack or the answer, whichever came first."""
        seen = [t for t in (self.ack_ms, self.answer_ms) if t is not None]
        return min(seen) if seen else None


class ChatClient:
    """A websocket chat session that times each turn."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> ChatClient:
        self._ws = await connect(f"{self.ws_url}/v1/chat", ping_interval=None, open_timeout=60,
                                 max_size=2**22)
        # Every session is a signed-in customer: the gateway verifies a token per session.
        await self._ws.send(json.dumps({"type": "hello", "customer_token": _customer_token()}))
        opened = json.loads(await self._ws.recv())
        if opened.get("type") != "session":
            raise RuntimeError(f"session refused: {opened}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def ask(self, text: str, *, timeout_s: float = 60.0) -> TurnTiming:
        """Send one message and read its events up to ``done`` (or an error)."""
        assert self._ws is not None
        turn = TurnTiming(text)
        started = time.perf_counter()
        await self._ws.send(json.dumps({"type": "message", "text": text}))
        async with asyncio.timeout(timeout_s):
            while True:
                item = json.loads(await self._ws.recv())
                elapsed = (time.perf_counter() - started) * 1000
                kind = item.get("type")
                if kind == "delta":
                    if item.get("source") == "ack" and turn.ack_ms is None:
                        turn.ack_ms = elapsed
                    elif item.get("source") == "answer" and turn.answer_ms is None:
                        turn.answer_ms = elapsed
                elif kind == "done":
                    turn.done_ms = elapsed
                    turn.server = item.get("timings_ms") or {}
                    turn.prefetch_hit = item.get("prefetch_hit")
                    turn.decision = item.get("decision")
                    turn.cited = [c["doc_id"] for c in item.get("citations") or []]
                    turn.rewritten = item.get("rewritten_query")
                    turn.reply = item.get("text") or ""
                    return turn
                elif kind == "error":
                    turn.error = item.get("code")
                    return turn


# ---------------------------------------------------------------------------- the gateway


@dataclass(frozen=True)
class GatewayProcess:
    """A gateway started by :func:`gateway_process`."""

    base_url: str
    pid: int

    @property
    def ws_url(self) -> str:
        """Its websocket base URL."""
        return self.base_url.replace("http://", "ws://")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process has used so far (Linux)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: A load generator is one address standing for many customers: the per-address limits
#: (docs/limits.md) are lifted unless a benchmark sets them (bench.flood_bench does).
LOAD_GENERATOR_LIMITS = {
    "DUET_CONN_PER_ADDRESS": "100000", "DUET_SESSIONS_PER_ADDRESS": "100000",
    "DUET_SESSION_OPEN_BURST": "100000", "DUET_SESSION_OPEN_RATE_PER_S": "100000",
    "DUET_ADDRESS_MESSAGE_BURST": "100000", "DUET_ADDRESS_MESSAGE_RATE_PER_S": "100000",
}


@contextlib.asynccontextmanager
async def gateway_process(**env: str) -> AsyncIterator[GatewayProcess]:
    """``duet serve`` in its own process on a temp data dir, yielded once the whole sample
    knowledge base is retrievable (every article ``hot``)."""
    with tempfile.TemporaryDirectory(prefix="duet-chat-bench-") as tmp:
        port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
        environ |= {"DUET_DATA_DIR": str(Path(tmp) / "data"), "DUET_PORT": str(port),
                    "DUET_LOG_LEVEL": "WARNING", "DUET_LOAD_SAMPLE_KB": "true",
                    **LOAD_GENERATOR_LIMITS, **env}
        log_path = Path(tmp) / "serve.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "duet_cli", "serve", env=environ, cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            async with httpx.AsyncClient(base_url=base, timeout=5.0) as http:
                await _until(lambda: _healthy(http), proc, log_path)
                await _until(lambda: _all_hot(http), proc, log_path)
            print(f"gateway ready with {len(SAMPLE_DOCS)} documents hot in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            yield GatewayProcess(base, proc.pid)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(60):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _healthy(http: httpx.AsyncClient) -> bool:
    return (await http.get("/healthz")).status_code == 200


async def _all_hot(http: httpx.AsyncClient) -> bool:
    for doc_id in SAMPLE_DOCS:
        res = await http.get(f"/v1/documents/{doc_id}")
        if res.status_code != 200 or res.json().get("tier") != "hot":
            return False
    return True


async def _until(check: Callable[[], Awaitable[bool]], proc: asyncio.subprocess.Process,
                 log_path: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            log = await asyncio.to_thread(log_path.read_text, errors="replace")
            raise RuntimeError(f"gateway exited ({proc.returncode}):\n{log[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if await check():
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"gateway not ready in {timeout_s:g} s")


# ---------------------------------------------------------------------------- measurements


async def _session(ws_url: str, questions: list[str], rng: random.Random,
                   think_s: tuple[float, float], delay_s: float) -> list[TurnTiming]:
    await asyncio.sleep(delay_s)
    out: list[TurnTiming] = []
    async with ChatClient(ws_url) as client:
        for i, question in enumerate(questions):
            if i:
                await asyncio.sleep(rng.uniform(*think_s))
            out.append(await client.ask(phrase(question, rng)))
    return out


async def run_sessions(ws_url: str, sessions: int, turns: int, *, seed: int,
                       think_s: tuple[float, float] = (0.3, 1.0),
                       ramp_s: float = 1.0) -> tuple[list[TurnTiming], float]:
    """``sessions`` concurrent sessions of ``turns`` random questions; (turns, wall s)."""
    rng = random.Random(seed)
    plans = [(rng.sample(QUESTIONS, turns), random.Random(rng.random()),
              rng.uniform(0, ramp_s) if sessions > 1 else 0.0) for _ in range(sessions)]
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_session(ws_url, qs, r, think_s, d)) for qs, r, d in plans]
    return [t for task in tasks for t in task.result()], time.perf_counter() - started


def _ms(values: list[float | None]) -> dict[str, float] | None:
    kept = [v for v in values if v is not None]
    return summary(kept) if kept else None


def latency_report(turns: list[TurnTiming], wall_s: float, sessions: int,
                   gateway_cpu_s: float, client_cpu_s: float) -> dict[str, Any]:
    """Client-side percentiles of one concurrency level."""
    ok = [t for t in turns if t.done_ms is not None]
    return {
        "sessions": sessions, "turns": len(turns), "completed": len(ok),
        "errors": sum(1 for t in turns if t.error), "wall_s": round(wall_s, 1),
        "turns_per_s": round(len(ok) / wall_s, 1),
        "distinct_texts": len({t.text for t in turns}),
        "gateway_cpu_ms_per_turn": round(gateway_cpu_s * 1000 / max(1, len(ok)), 1),
        "gateway_cpu_utilisation": round(gateway_cpu_s / wall_s, 2),
        "client_cpu_utilisation": round(client_cpu_s / wall_s, 2),
        "turns_with_ack": sum(1 for t in ok if t.ack_ms is not None),
        "prefetch_hits": sum(1 for t in ok if t.prefetch_hit),
        "decisions": {d: sum(1 for t in ok if t.decision == d)
                      for d in sorted({t.decision or "?" for t in ok})},
        "ack_first_ms": _ms([t.ack_ms for t in ok]),
        "answer_first_ms": _ms([t.answer_ms for t in ok]),
        "first_visible_ms": _ms([t.first_visible_ms for t in ok]),
        "done_ms": _ms([t.done_ms for t in ok]),
        "server_answer_first_ms": _ms([t.server.get("answer_first") for t in ok]),
    }


#: Seconds between a reply and the next message of a person reading and typing.
CUSTOMER_THINK_S = (3.0, 8.0)


async def latency(gw: GatewayProcess) -> tuple[dict[str, Any], list[TurnTiming]]:
    """The three concurrency levels; returns the report and the one-session turns."""
    # Warm-up (unmeasured): every question once (phrased differently from the measured
    # turns), so model sessions and per-chunk sentence vectors are as in a running service.
    await run_sessions(gw.ws_url, 8, 5, seed=0, think_s=(0.0, 0.0), ramp_s=0.0)
    report: dict[str, Any] = {"think_time_s": [0.3, 1.0], "start_ramp_s": 1.0}
    single: list[TurnTiming] = []
    plan = {1: (10, 4), 50: (50, 4), 200: (200, 3)}  # level: (sessions, turns per session)
    for level in LEVELS:
        sessions, turns = plan[level]
        cpu0, client0 = gw.cpu_s(), time.process_time()
        if level == 1:  # one session at a time, ten in a row
            results: list[TurnTiming] = []
            started = time.perf_counter()
            for s in range(sessions):
                got, _ = await run_sessions(gw.ws_url, 1, turns, seed=100 + s)
                results += got
            wall_s = time.perf_counter() - started
            single = results
        else:
            results, wall_s = await run_sessions(gw.ws_url, sessions, turns, seed=level)
        report[f"{level}_sessions"] = latency_report(
            results, wall_s, level, gw.cpu_s() - cpu0, time.process_time() - client0)
        print(f"  {level} concurrent: {len(results)} turns in {wall_s:.1f} s", flush=True)
        if level > 1:
            # The same sessions at a customer's pace: read the reply, type the next message.
            cpu0, client0 = gw.cpu_s(), time.process_time()
            results, wall_s = await run_sessions(gw.ws_url, sessions, turns, seed=level + 1,
                                                 think_s=CUSTOMER_THINK_S, ramp_s=3.0)
            report[f"{level}_sessions_customer_pace"] = latency_report(
                results, wall_s, level, gw.cpu_s() - cpu0, time.process_time() - client0)
            print(f"  {level} concurrent at customer pace: {len(results)} turns in "
                  f"{wall_s:.1f} s", flush=True)
    report["customer_pace_think_time_s"] = list(CUSTOMER_THINK_S)
    return report, single


async def prefetch(gw: GatewayProcess) -> dict[str, Any]:
    """Scripted two-turn conversations, 1 s apart: how often turn 2 hits the prefetch."""
    rows = []
    for first, second, expected in FOLLOW_UPS:
        async with ChatClient(gw.ws_url) as client:
            one = await client.ask(first)
            await asyncio.sleep(1.0)
            two = await client.ask(second)
        rows.append({"turn1": first, "turn1_cited": one.cited[:1], "turn1_decision": one.decision,
                     "turn2": second, "rewritten": two.rewritten, "prefetch_hit": two.prefetch_hit,
                     "decision": two.decision, "cited": two.cited[:2],
                     "correct_doc": bool(two.cited) and two.cited[0] in expected,
                     "answer_first_ms": two.answer_ms, "first_visible_ms": two.first_visible_ms,
                     "ack": two.ack_ms is not None})
    hits = [r for r in rows if r["prefetch_hit"]]
    misses = [r for r in rows if not r["prefetch_hit"]]
    return {
        "conversations": len(rows), "hits": len(hits),
        "hit_rate": round(len(hits) / len(rows), 3), "target": 0.75,
        "turn2_correct_doc": sum(r["correct_doc"] for r in rows),
        "turn2_correct_doc_on_hits": sum(r["correct_doc"] for r in hits),
        "answer_first_ms_hits": _ms([r["answer_first_ms"] for r in hits]),
        "answer_first_ms_misses": _ms([r["answer_first_ms"] for r in misses]),
        "acks_on_hits": sum(r["ack"] for r in hits),
        "misses": [{k: r[k] for k in ("turn1", "turn1_cited", "turn2", "rewritten", "decision",
                                      "cited")} for r in misses],
        "wrong_doc": [{k: r[k] for k in ("turn2", "rewritten", "prefetch_hit", "cited")}
                      for r in rows if not r["correct_doc"]],
    }


async def sequential_baseline(single: list[TurnTiming]) -> dict[str, Any]:
    """Embed → search → whole extractive answer, in-process, against the gateway's first text."""
    from agents.retrieval import ExtractiveGenerator
    from ingest.loader import events_from_directory
    from ingest.publisher import publish_and_wait

    async with scratch_runtime() as rt:
        assert rt.nc is not None and rt.kb is not None
        for event in events_from_directory(SAMPLE_KB, source="sample"):
            await publish_and_wait(rt.nc, event, timeout_s=60)
        kb = rt.kb
        generator = ExtractiveGenerator(kb.embedder)

        def answer(question: str) -> float:
            started = time.perf_counter()
            hits = kb.search_text(question, k=8).hits
            text = " ".join(s.text for s in generator.select(question, hits))
            assert text
            return (time.perf_counter() - started) * 1000

        # First pass (differently phrased) fills the per-chunk sentence vectors, as the
        # gateway's warm-up did; the measured pass asks exactly what the one-session run asked.
        rng = random.Random(1)
        cold = [await asyncio.to_thread(answer, phrase(q, rng)) for q in QUESTIONS]
        warm = [await asyncio.to_thread(answer, t.text) for t in single]
    visible = [t.first_visible_ms for t in single if t.first_visible_ms is not None]
    searched = [t.first_visible_ms for t in single
                if t.first_visible_ms is not None and not t.prefetch_hit]
    full = [t.done_ms for t in single if t.done_ms is not None]
    base, first = summary(warm), summary(visible)
    return {
        "sequential_complete_answer_ms": base,
        "sequential_complete_answer_ms_first_pass": summary(cold),
        "gateway_first_visible_ms_1_session": first,
        "gateway_first_visible_ms_1_session_searched_turns": summary(searched),
        "gateway_done_ms_1_session": summary(full),
        "ratio_p50_sequential_over_first_visible": round(base["p50"] / first["p50"], 2),
        "note": "sequential = in-process KnowledgeBase.search_text(k=8) + "
                "ExtractiveGenerator.select, no network; gateway = client-side over a "
                "loopback websocket, min(first ack delta, first answer delta)",
    }


async def journal_figures(gw: GatewayProcess) -> dict[str, Any]:
    """Session-journal appends measured inside the gateway (its /metrics)."""
    async with httpx.AsyncClient(base_url=gw.base_url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        for name in ("duet_session_journal_seconds_sum", "duet_session_journal_seconds_count",
                     "duet_session_journal_failures_total", "duet_turns_total"):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                values[name] = values.get(name, 0.0) + float(line.split()[-1])
    count = values.get("duet_session_journal_seconds_count", 0.0)
    turns = values.get("duet_turns_total", 0.0)
    return {
        "events_appended": int(count),
        "append_mean_ms": round(1000 * values.get("duet_session_journal_seconds_sum", 0.0)
                                / max(1.0, count), 3),
        "events_per_turn": round(count / max(1.0, turns), 1),
        "failures": int(values.get("duet_session_journal_failures_total", 0.0)),
    }


async def persistence(durable: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The 50-session customer-pace run again with sessions in memory only: the cost of
    keeping every conversation in JetStream, per turn."""
    async with gateway_process(DUET_DURABLE_SESSIONS="false", **env) as gw:
        await run_sessions(gw.ws_url, 8, 5, seed=0, think_s=(0.0, 0.0), ramp_s=0.0)
        cpu0, client0 = gw.cpu_s(), time.process_time()
        results, wall_s = await run_sessions(gw.ws_url, 50, 4, seed=51,
                                             think_s=CUSTOMER_THINK_S, ramp_s=3.0)
        memory = latency_report(results, wall_s, 50, gw.cpu_s() - cpu0,
                                time.process_time() - client0)
    keys = ("gateway_cpu_ms_per_turn", "ack_first_ms", "answer_first_ms", "done_ms")
    on = durable["50_sessions_customer_pace"]
    return {
        "durable": {k: on[k] for k in keys}, "memory_only": {k: memory[k] for k in keys},
        "gateway_cpu_ms_per_turn_cost": round(on["gateway_cpu_ms_per_turn"]
                                              - memory["gateway_cpu_ms_per_turn"], 1),
        "answer_first_p50_ms_cost": round(on["answer_first_ms"]["p50"]
                                          - memory["answer_first_ms"]["p50"], 1),
        "journal": durable.get("journal"),
    }


#: The bench signs its customers' tokens as a company backend would.
TOKEN_SECRET = secrets.token_urlsafe(48)


def _customer_token() -> str:
    from core.settings import Settings
    from gateway.auth import CustomerTokens

    return CustomerTokens(Settings(_env_file=None, customer_token_secret=TOKEN_SECRET)).mint(
        f"bench-{secrets.token_hex(6)}", ["public"], ttl_s=3600)


async def main() -> None:
    env = {"DUET_CHAT_RATE_BURST": "1000", "DUET_CHAT_RATE_PER_S": "1000",
           "DUET_CUSTOMER_TOKEN_SECRET": TOKEN_SECRET}
    async with gateway_process(**env) as gw:
        report, single = await latency(gw)
        report["journal"] = await journal_figures(gw)
        save("chat_latency", report)
        save("chat_prefetch", await prefetch(gw))
    save("chat_persistence", await persistence(report, env))
    save("chat_vs_sequential", await sequential_baseline(single))


__all__ = ["FOLLOW_UPS", "QUESTIONS", "ChatClient", "GatewayProcess", "TurnTiming",
           "gateway_process", "main", "phrase"]

if __name__ == "__main__":
    asyncio.run(main())
