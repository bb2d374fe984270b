"""The limit hints' copy of a redis-py client: calls bounded by ``timeout_s``, the pool keeps the user's settings.

No server is needed: building pools and clients opens no connection.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

redis = pytest.importorskip("redis", reason="redis-py is not installed (the 'redis' extra)")

from redis.sentinel import Sentinel, SentinelConnectionPool  # noqa: E402

from mongo_job_queue.contrib.redis import RedisLimitHints  # noqa: E402


class MetricsPool(redis.ConnectionPool):
    """A subclass, as a pool with metrics would be."""


class OddPool(redis.ConnectionPool):
    """A subclass whose constructor is its own: it cannot be copied."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)


def pool_of(hints: RedisLimitHints) -> Any:
    return hints.client.connection_pool


def test_sentinel_clients_and_pool_subclasses_are_bounded_too() -> None:
    sentinel = Sentinel([("127.0.0.1", 26399)]).master_for("mymaster", db=3)
    pool = pool_of(RedisLimitHints(sentinel, timeout_s=0.25))
    assert isinstance(pool, SentinelConnectionPool) and pool is not sentinel.connection_pool
    assert pool.service_name == "mymaster" and pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["socket_timeout"] == 0.25
    assert pool.connection_kwargs["connection_pool"] is pool.proxy  # its own proxy, not the original's
    subclassed = pool_of(RedisLimitHints(redis.Redis(connection_pool=MetricsPool(port=6390)), timeout_s=0.25))
    assert type(subclassed) is MetricsPool and subclassed.connection_kwargs["socket_timeout"] == 0.25
    assert subclassed.connection_kwargs["socket_connect_timeout"] == 0.25


def test_a_blocking_pool_keeps_its_size_and_wait() -> None:
    user = redis.BlockingConnectionPool(max_connections=3, timeout=7, port=6390)
    pool = pool_of(RedisLimitHints(redis.Redis(connection_pool=user), timeout_s=0.25))
    assert type(pool) is redis.BlockingConnectionPool
    assert (pool.max_connections, pool.timeout) == (3, 7)
    assert pool.connection_kwargs["socket_timeout"] == 0.25
    plain = pool_of(RedisLimitHints(redis.Redis(max_connections=5), timeout_s=0.25))
    assert plain.max_connections == 5


def test_a_client_that_cannot_be_bounded_is_kept_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis(connection_pool=OddPool("x", port=6390))
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue.contrib.redis.hints"):
        hints = RedisLimitHints(client, timeout_s=0.25)
    assert hints.client is client
    assert any("timeout_s=0.25 not applied" in r.getMessage() for r in caplog.records)
    caplog.clear()
    RedisLimitHints(client, timeout_s=None)  # the client's own, as asked: nothing to say
    assert not caplog.records


class FakeClock:
    """``time.monotonic`` of the hints module, moved by the calls themselves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def call_taking(self, seconds: float) -> Any:
        def call() -> str:
            self.now += seconds
            return "answer"

        return call


def test_slow_calls_in_a_row_pause_the_hints_and_a_fast_one_breaks_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from mongo_job_queue.contrib.redis import hints as hints_module

    clock = FakeClock()
    monkeypatch.setattr(hints_module.time, "monotonic", clock)
    hints = RedisLimitHints(redis.Redis(port=6390), slow_ms=30)
    slow, fast = clock.call_taking(0.1), clock.call_taking(0.001)
    for call in (slow, slow, fast, slow, slow):  # never SLOW_IN_A_ROW in a row
        assert hints._call("read", call, "default") == "answer"
    assert hints._call("read", slow, "default") == "answer"  # the third in a row: answered, then paused
    assert hints._call("read", fast, "default") == "default"
    assert hints.slow_calls == 5 and hints.failures == 0
    clock.now += hints_module.PAUSE_AFTER_ERROR_S
    assert hints._call("read", fast, "default") == "answer"  # tried again after the pause
    unruled = RedisLimitHints(redis.Redis(port=6390), slow_ms=None)
    for _ in range(5):
        assert unruled._call("read", slow, "default") == "answer"
    with pytest.raises(ValueError, match="slow_ms"):
        RedisLimitHints(redis.Redis(port=6390), slow_ms=0)
