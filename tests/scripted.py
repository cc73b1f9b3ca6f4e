"""Scripted agents for tests of the router and sessions: the gateway's logic, not the
agents', is under test (the agents have their own tests against the real models)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents.retrieval import AnswerDelta, AnswerFinal, Citation, TurnContext

NOW = datetime(2026, 11, 30, tzinfo=UTC)


class InlineExecutor(Executor):
    """Runs the acknowledgment on the loop's thread: no real time passes in a thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


@dataclass
class _Ack:
    text: str


class ScriptedAck:
    """An acknowledgment agent that answers at once (or fails)."""

    def __init__(self) -> None:
        self.fail = False
        self.calls: list[str] = []

    def acknowledge(self, text: str, *, session_key: str, flags: Any) -> _Ack:
        self.calls.append(text)
        if self.fail:
            raise RuntimeError("ack model exploded")
        return _Ack("Let me check that for you.")


class ScriptedRetrieval:
    """A retrieval agent that follows a script of (delay_s, action) steps."""

    def __init__(self) -> None:
        self.script: list[tuple[float, str]] = [(0.5, "search"), (0.0, "Hold the button"),
                                                (0.2, " for 15 seconds.")]
        self.fail_after: int | None = None
        self.contexts: list[TurnContext] = []
        self.prefetched = 0

    async def stream(self, ctx: TurnContext) -> AsyncIterator[Any]:
        self.contexts.append(ctx)
        parts: list[str] = []
        for i, (delay_s, action) in enumerate(self.script):
            if self.fail_after is not None and i >= self.fail_after:
                raise ValueError("the index is on fire")
            await asyncio.sleep(delay_s)
            if action == "search":
                assert ctx.on_search is not None
                ctx.on_search()
                continue
            parts.append(action)
            yield AnswerDelta(action)
        text = "".join(parts)
        yield AnswerFinal(
            text=text, citations=[Citation("hub-reset", "Resetting the hub", None, 3, NOW)],
            as_of=NOW, confidence=0.9, decision="answer", rewritten_query=ctx.text,
            prefetch_hit=False, escalate_reason=None)

    async def prefetch(self, ctx: TurnContext, final: AnswerFinal) -> None:
        self.prefetched += 1
