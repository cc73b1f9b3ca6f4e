"""Background work that is watched: named tasks in one ``TaskGroup``, and probes.

A component's long-running loops (the ingest worker, the registry watchers) run as tasks of
a :class:`TaskBoard`. One that dies is logged and recorded — it never takes its siblings or
the process down — and :meth:`TaskBoard.report` (served by ``/healthz``) says so until the
process is restarted. Work that runs on threads (an index rebuilt in the background) is
watched with a probe: a callable that returns None when healthy, else what is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["TaskBoard", "TaskState", "failure_of"]

log = logging.getLogger("duet.tasks")

State = Literal["running", "stopped", "failed"]


@dataclass
class TaskState:
    """How one background task (or probe) stands."""

    state: State
    since: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Running (a stopped task is fine only during shutdown)."""
        return self.state == "running"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form for ``/healthz``."""
        out: dict[str, Any] = {"ok": self.ok, "state": self.state,
                               "for_s": round(time.monotonic() - self.since, 1)}
        if self.error:
            out["error"] = self.error
        return out


class TaskBoard:
    """Named background tasks of one component, in one task group."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._states: dict[str, TaskState] = {}
        self._probes: dict[str, Callable[[], str | None]] = {}

    async def __aenter__(self) -> TaskBoard:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks.values():
            task.cancel()
        group, self._group = self._group, None
        if group is not None:
            await group.__aexit__(None, None, None)

    def start(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as the task ``name``."""
        if self._group is None:
            coro.close()
            raise RuntimeError("the task board is not running")
        self._states[name] = TaskState("running", time.monotonic())
        task = self._group.create_task(self._watched(name, coro), name=name)
        self._tasks[name] = task
        return task

    async def _watched(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            self._states[name] = TaskState("stopped", time.monotonic())
            raise
        except Exception as exc:
            log.exception("background task %s died", name)
            self._states[name] = TaskState("failed", time.monotonic(),
                                           f"{type(exc).__name__}: {str(exc)[:200]}")
        else:
            self._states[name] = TaskState("stopped", time.monotonic())

    def probe(self, name: str, check: Callable[[], str | None]) -> None:
        """Watch thread-based work: ``check()`` returns None when healthy, else the error."""
        self._probes[name] = check

    def task(self, name: str) -> asyncio.Task[None] | None:
        """The task of that name, if it was started."""
        return self._tasks.get(name)

    def report(self) -> dict[str, TaskState]:
        """Every task's and probe's state."""
        out = dict(self._states)
        for name, check in self._probes.items():
            try:
                error = check()
            except Exception as exc:  # a probe that fails is itself a finding
                error = f"probe failed: {type(exc).__name__}"
            out[name] = TaskState("failed" if error else "running", time.monotonic(), error)
        return out

    @property
    def healthy(self) -> bool:
        """Whether every task runs and every probe passes."""
        return all(state.ok for state in self.report().values())


def failure_of(future: Future[Any] | None, what: str) -> str | None:
    """A probe's answer for work run on a thread: None unless the last run raised."""
    if future is None or not future.done() or future.cancelled():
        return None
    error = future.exception()
    return None if error is None else f"{what} failed: {type(error).__name__}"
