"""Admission pieces on their own: address keys, trusted proxies, the bounded rate table,
connection counting, and the session registry's eviction order (no network)."""

from __future__ import annotations

import asyncio

import pytest

from core.metrics import Metrics
from core.settings import Settings
from gateway.admission import Admission, RateTable, TrustedProxies, address_key
from gateway.sessions import SessionLimits, Sessions, SessionsFull

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_address_keys_ipv6_by_prefix() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:198.51.100.4") == "198.51.100.4"
    assert address_key("testclient") == "testclient"


def test_trusted_proxy_forwarded_for_is_believed_only_from_a_proxy() -> None:
    proxies = TrustedProxies("10.0.0.0/8, 192.0.2.1")
    headers = [(b"x-forwarded-for", b"198.51.100.9, 10.1.2.3")]
    assert proxies.client_host({"client": ("10.0.0.5", 1), "headers": headers}) == "198.51.100.9"
    assert proxies.client_host({"client": ("203.0.113.1", 1), "headers": headers}) == "203.0.113.1"
    assert proxies.client_host({"client": ("10.0.0.5", 1), "headers": []}) == "10.0.0.5"
    garbage = [(b"x-forwarded-for", b"not-an-ip")]
    assert proxies.client_host({"client": ("10.0.0.5", 1), "headers": garbage}) == "10.0.0.5"
    assert not TrustedProxies(None)
    assert TrustedProxies(None).client_host(
        {"client": ("10.0.0.5", 1), "headers": headers}) == "10.0.0.5"


def test_rate_table_refills_says_how_long_and_stays_bounded() -> None:
    clock = Clock()
    table = RateTable(burst=2, per_s=0.5, max_keys=3, clock=clock)
    assert table.take("a") == 0 and table.take("a") == 0
    assert table.take("a") == pytest.approx(2.0)
    clock.now = 2.0
    assert table.take("a") == 0
    for key in "bcdefg":
        table.take(key)
    assert len(table) == 3  # the least recently seen addresses were forgotten


def test_connections_counted_per_address_and_in_total(tmp_path) -> None:
    metrics = Metrics()
    settings = Settings(_env_file=None, data_dir=tmp_path, conn_per_address=2, conn_total=3)
    admission = Admission(settings, metrics)
    scope = {"type": "http", "client": ("198.51.100.1", 5), "headers": []}
    one, two = admission.client(scope), admission.client(scope)
    assert admission.enter(one, "http") is None and admission.enter(two, "http") is None
    refused = admission.enter(admission.client(scope), "http")
    assert refused is not None and refused.status == 429
    other = admission.client({**scope, "client": ("198.51.100.2", 5)})
    assert admission.enter(other, "http") is None
    full = admission.enter(admission.client({**scope, "client": ("198.51.100.3", 5)}), "http")
    assert full is not None and full.status == 503
    admission.leave(one, "http")
    assert admission.open_connections("198.51.100.1") == 1
    assert admission.open_connections() == 2
    assert metrics.registry.get_sample_value(
        "duet_refusals_total", {"limit": "connections_per_address"}) == 1


def test_operator_tokens_are_exempt(tmp_path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, conn_per_address=1,
                        api_tokens="ops:op-0123456789abcdef0123")
    admission = Admission(settings, Metrics())
    plain = {"type": "http", "client": ("198.51.100.1", 5), "headers": [], "path": "/"}
    operator = {**plain, "headers": [(b"authorization", b"Bearer op-0123456789abcdef0123")]}
    wrong = {**plain, "headers": [(b"authorization", b"Bearer nope")]}
    assert admission.enter(admission.client(plain), "http") is None
    assert admission.enter(admission.client(wrong), "http") is not None
    assert admission.client(operator).exempt
    assert admission.enter(admission.client(operator), "http") is None


async def test_sessions_let_the_least_recently_active_idle_one_go_first() -> None:
    metrics = Metrics()
    async with Sessions(log_size=100, idle_s=600, rate_burst=10, rate_per_s=1,
                        metrics=metrics, limits=SessionLimits(per_address=3, total=4)
                        ) as sessions:
        made = [(await sessions.create(channel="web", customer_id=None, groups=(),
                                       address="a"))[0] for _ in range(3)]
        made[0].subscribe()  # the two oldest are connected: not idle
        made[1].subscribe()
        fourth, _ = await sessions.create(channel="web", customer_id=None, groups=(),
                                          address="a")
        assert sessions.held(made[0].id) is not None
        assert sessions.held(made[1].id) is not None
        assert sessions.held(made[2].id) is None  # the only idle one
        # in total: the other address's session makes room from address a's idle ones
        await sessions.create(channel="web", customer_id=None, groups=(), address="b")
        assert len(sessions) == 4
        await sessions.create(channel="web", customer_id=None, groups=(), address="b")
        assert sessions.held(fourth.id) is None
        # everything connected: refused
        for session in list(sessions._sessions.values()):
            session.subscribe()
        with pytest.raises(SessionsFull) as refused:
            await sessions.create(channel="web", customer_id=None, groups=(), address="c")
        assert refused.value.code == "unavailable" and refused.value.limit == "sessions_total"
        await asyncio.sleep(0)
    assert metrics.registry.get_sample_value(
        "duet_sessions_released_total", {"reason": "evicted_address"}) == 1


async def test_reaper_ends_expired_sessions_and_tells_the_hooks() -> None:
    ended: list[str] = []
    passes: list[int] = []

    async def on_ended(session) -> None:
        ended.append(session.id)

    async def after() -> None:
        passes.append(1)

    async with Sessions(log_size=100, idle_s=10, rate_burst=10, rate_per_s=1,
                        limits=SessionLimits(shed_s=1, unload_s=5)) as sessions:
        sessions.on_ended(on_ended)
        sessions.after_reap(after)
        old, shed, fresh = [(await sessions.create(channel="web", customer_id=None,
                                                   groups=()))[0] for _ in range(3)]
        old.last_active -= 20
        shed.last_active -= 6  # past unload_s, but not durable: it stays, shed
        await sessions.reap()
        assert ended == [old.id] and passes == [1]
        assert sessions.held(old.id) is None
        assert sessions.held(shed.id) is shed and sessions.held(fresh.id) is fresh


def test_a_bad_trusted_proxy_is_refused_at_start(tmp_path) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="not an address or CIDR"):
        Settings(_env_file=None, data_dir=tmp_path, trusted_proxies="10.0.0.0/8, proxy.lan")
