"""A small thread pool that runs the most urgent work first.

Speech work is not equally urgent: the first words of a reply (or a caller's final
transcript) matter more than the fifth sentence of another caller's answer (or an
interim transcript). :class:`PriorityExecutor` is a fixed set of threads taking jobs from
one priority queue (lower runs first, FIFO within a priority); ``submit`` returns a
``concurrent.futures.Future`` (``asyncio.wrap_future`` awaits it).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["URGENT", "NORMAL", "PriorityExecutor"]

URGENT = 0
NORMAL = 1


class PriorityExecutor:
    """``workers`` threads; the lowest ``priority`` is run first."""

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any,
               priority: int = NORMAL) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on a thread, before every job of a higher ``priority``."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._closed:
            future.cancel()
            return future
        self._jobs.put((priority, next(self._order), (future, fn, args)))
        return future

    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel what has not started and let the threads end after their job."""
        self._closed = True
        while True:
            try:
                _, _, job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put((1 << 30, next(self._order), None))
