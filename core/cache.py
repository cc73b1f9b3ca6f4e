"""A thread-safe LRU cache whose misses are computed once.

:class:`SharedLRU` keeps the ``size`` most recently used values. Threads that miss on one
key while its value is being made wait for that value instead of making it again (a
"single flight"): the acknowledgment and the retrieval agent embedding one message, or
a busy gateway's turns reading one article's sentences at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["SharedLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedLRU(Generic[K, V]):
    """The ``size`` most recently used values, each made once however many ask at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._making: dict[K, Future[V]] = {}
        self._lock = threading.Lock()

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The cached value of ``key``, else ``make()``'s (blocking; an error of ``make``
        is raised to every thread that waited for it, and nothing is cached)."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            pending = self._making.get(key)
            owner = pending is None
            if pending is None:
                pending = self._making[key] = Future()
        if not owner:
            return pending.result()
        try:
            value = make()
        except BaseException as exc:
            with self._lock:
                del self._making[key]
            pending.set_exception(exc)
            raise
        with self._lock:  # cached before it stops being made: no gap to miss in
            self._values[key] = value
            while len(self._values) > self.size:
                self._values.popitem(last=False)
            del self._making[key]
        pending.set_result(value)
        return value

    def __len__(self) -> int:
        return len(self._values)
