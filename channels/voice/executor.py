"""A small thread pool that runs the most urgent work first.

Speech work is not equally urgent: the first words of a reply (or a caller's final
transcript) matter more than the fifth sentence of another caller's answer (or an
interim transcript). :class:`PriorityExecutor` is a fixed set of threads taking jobs from
one priority heap (lower runs first; within a priority, the earliest ``deadline`` —
by default the time of submission, so first come, first served); ``submit`` returns a
``concurrent.futures.Future`` (``asyncio.wrap_future`` awaits it). Calls give a later
sentence the time its audio is needed (when what the caller is hearing runs out), so
the sentence about to leave a gap goes before one that has seconds to spare.

A priority queue alone cannot stop a job that has started: with every thread inside some
caller's 300 ms sentence, another caller's first words wait for one to finish. So the
executor also keeps ``urgent_lanes`` threads that take only urgent jobs. They are idle
most of the time; when they run, the operating system shares the cores between them and
the threads already busy, which is the preemption the heap cannot do — an urgent job
starts at once and runs at a share of a core instead of waiting for a whole one.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["URGENT", "NORMAL", "PriorityExecutor"]

URGENT = 0
NORMAL = 1


class PriorityExecutor:
    """``workers`` threads (plus ``urgent_lanes`` for urgent jobs only); the lowest
    ``priority`` is run first."""

    def __init__(self, workers: int, name: str, *, urgent_lanes: int = 0) -> None:
        self._jobs: list[tuple[int, float, int, Any]] = []
        self._ready = threading.Condition()
        self._order = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(None,),
                                          name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        self._threads += [threading.Thread(target=self._work, args=(URGENT,),
                                           name=f"{name}-urgent-{i}", daemon=True)
                          for i in range(urgent_lanes)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = NORMAL,
               deadline: float | None = None) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on a thread, before every job of a higher ``priority`` and
        every job of its priority with a later ``deadline`` (``time.monotonic()``
        seconds; default: now)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                future.cancel()
                return future
            due = time.monotonic() if deadline is None else deadline
            heapq.heappush(self._jobs, (priority, due, next(self._order), (future, fn, args)))
            self._ready.notify_all()
        return future

    def _take(self, most: int | None) -> Any:
        """The next job this thread may run (``most``: the highest priority it takes),
        or None once the executor is shut down."""
        with self._ready:
            while True:
                if self._jobs and (most is None or self._jobs[0][0] <= most):
                    return heapq.heappop(self._jobs)[3]
                if self._closed:
                    return None
                self._ready.wait()

    def _work(self, most: int | None) -> None:
        while (job := self._take(most)) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel what has not started and let the threads end after their job."""
        with self._ready:
            self._closed = True
            jobs, self._jobs = self._jobs, []
            self._ready.notify_all()
        for _, _, _, (future, _, _) in jobs:
            future.cancel()
