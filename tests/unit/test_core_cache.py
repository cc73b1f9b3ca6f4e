"""core.cache.SharedLRU: least recently used first out; a miss is made once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.cache import SharedLRU

pytestmark = pytest.mark.unit


def test_the_least_recently_used_value_leaves_first() -> None:
    cache: SharedLRU[str, int] = SharedLRU(2)
    made: list[str] = []

    def make(key: str) -> int:
        made.append(key)
        return len(made)

    assert cache.get_or_make("a", lambda: make("a")) == 1
    assert cache.get_or_make("b", lambda: make("b")) == 2
    assert cache.get_or_make("a", lambda: make("a")) == 1  # used again: "b" is older now
    cache.get_or_make("c", lambda: make("c"))
    assert len(cache) == 2
    cache.get_or_make("a", lambda: make("a"))
    cache.get_or_make("b", lambda: make("b"))
    assert made == ["a", "b", "c", "b"]


def test_a_failed_make_reaches_every_waiter_and_is_not_cached() -> None:
    cache: SharedLRU[str, int] = SharedLRU(8)
    calls: list[int] = []
    barrier = threading.Barrier(3)

    def failing() -> int:
        calls.append(1)
        time.sleep(0.3)  # the other threads arrive while it runs
        raise ValueError("no model")

    def ask(_: int) -> str:
        barrier.wait()
        try:
            cache.get_or_make("k", failing)
        except ValueError as exc:
            return str(exc)
        return "made"

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(ask, range(3))) == ["no model"] * 3
    assert len(calls) == 1 and len(cache) == 0
    assert cache.get_or_make("k", lambda: 7) == 7  # tried again, not remembered failing
