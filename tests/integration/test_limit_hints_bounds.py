"""Redis limit hints: the bounds they promise (how long a hint delays, which hints are read, what Redis may cost).

Against the real Redis (127.0.0.1:6379, keys under a prefix of each test's
own), with the library's own polling where the delay is what is measured.
"""

from __future__ import annotations

import calendar
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import mongoengine
import pytest
from helpers import run_forked, wait_until
from redis_support import RedisServer, SlowProxy, forget, fresh_prefix, shared_client

from mongo_job_queue import BaseJob, create_job_queue
from mongo_job_queue.dev.embedded import EmbeddedMongo
from mongo_job_queue.store.limiter import limiter_id

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_prefix() -> Iterator[tuple[Any, str]]:
    client = shared_client()
    prefix = fresh_prefix()
    yield client, prefix
    forget(client, prefix)


def ms(when: Any) -> int:
    return calendar.timegm(when.utctimetuple()) * 1000 + when.microsecond // 1000


@pytest.mark.parametrize("base_ms", [1000, 3000])  # 1000: the default
def test_a_claim_that_skipped_on_a_hint_looks_again_within_half_a_second_whatever_the_base(
    make_queue, redis_prefix, base_ms
) -> None:
    from mongo_job_queue.contrib.redis import RedisLimitHints

    client, prefix = redis_prefix
    queue = make_queue(poll_interval_base_ms=base_ms, poll_interval_max_ms=30_000)
    queue.limit("solo", key="organization", max_running=1)
    queue.add_limit_hints(RedisLimitHints(client, prefix=prefix))  # ttl_ms=1000, the default
    bound = queue.store.limits.hints
    started: list[Any] = []
    queue.register_handler("O", lambda job: started.append(queue.store.now()))
    queue.start_polling()
    wait_until(lambda: queue.worker._idle.is_set(), timeout=10, what="the poller idle")
    lid = limiter_id("solo", "acme")
    set_at = queue.store.now()
    client.set(bound.key("f", lid), ms(set_at), px=1000)  # a lie as the hints write one, trusted until set_at + 1 s
    time.sleep(0.85)  # the setup of the case: the claim meets the hint near the end of its trust window
    queue.enqueue("O", {}, organization="acme")  # wakes the poller; its claim skips on the hint
    wait_until(lambda: started, timeout=10, what="the job ran")
    after_trust = (started[0] - set_at).total_seconds() - 1.0
    assert after_trust <= 0.5 + 0.15, after_trust  # 0.5 s, and the claim's own time


def test_a_full_hint_stamped_ahead_without_expiry_is_trusted_no_longer_than_the_window(redis_prefix) -> None:
    from mongo_job_queue.contrib.redis import RedisLimitHints

    client, prefix = redis_prefix
    bound = RedisLimitHints(client, prefix=prefix, ttl_ms=1000).bind("db.jobs", 60_000)
    now = datetime(2030, 1, 1)
    # Stamped a window ahead (by hand, or a writer's clock ahead): a key that outlives the window is not read,
    # and one that expires within it is trusted at most the window from its stamp.
    client.set(bound.key("f", "L"), ms(now + timedelta(milliseconds=1000)), px=60_000)
    assert "L" not in bound.look(["L"], now + timedelta(milliseconds=1999))  # its expiry outlives the window
    client.set(bound.key("f", "L"), ms(now + timedelta(milliseconds=1000)))  # no expiry at all
    assert "L" not in bound.look(["L"], now + timedelta(milliseconds=1999))
    client.set(bound.key("f", "L"), ms(now + timedelta(milliseconds=1000)), px=1000)
    trusted = [t for t in range(0, 3000, 50) if "L" in bound.look(["L"], now + timedelta(milliseconds=t))]
    assert trusted and trusted[-1] - trusted[0] <= 1000 + 50, (trusted[0], trusted[-1])  # 50: clock agreement


class OtherDeploymentJob(BaseJob):
    """The same database and collection names as the tests' jobs, on another server."""

    meta = {"collection": "jobs", "db_alias": "mjq-hints-other-deployment"}


def test_two_deployments_with_the_same_names_never_read_each_others_hints(make_queue, db_name, redis_prefix) -> None:
    from mongo_job_queue.contrib.redis import RedisLimitHints

    client, prefix = redis_prefix
    here = make_queue()
    here.add_limit_hints(RedisLimitHints(client, prefix=prefix))
    again = make_queue()  # another worker of the same deployment: the same hints
    again.add_limit_hints(RedisLimitHints(client, prefix=prefix))
    with EmbeddedMongo() as server:
        alias = OtherDeploymentJob._meta["db_alias"]
        mongoengine.connect(db=db_name, host=server.uri, alias=alias, uuidRepresentation="standard")
        try:
            there = create_job_queue(job_model=OtherDeploymentJob)
            there.add_limit_hints(RedisLimitHints(client, prefix=prefix))
            mine, theirs = here.store.limits.hints, there.store.limits.hints
            now = here.store.now()
            mine.saw_full(["L"], now)
            assert again.store.limits.hints.look(["L"], now)["L"].full
            assert theirs.look(["L"], now) == {}, (mine.base, theirs.base)
        finally:
            mongoengine.disconnect(alias)


def test_a_frozen_redis_behind_a_pool_subclass_holds_a_claim_no_longer_than_the_timeout(make_queue) -> None:
    redis = pytest.importorskip("redis")
    from mongo_job_queue.contrib.redis import RedisLimitHints

    class MetricsPool(redis.ConnectionPool):  # type: ignore[misc]
        """Any subclass (a pool with metrics, say)."""

    server = RedisServer()
    server.start()
    try:
        queue = make_queue()
        queue.limit("per-org", key="organization", max_running=2)
        client = redis.Redis(connection_pool=MetricsPool(port=server.port))  # no socket timeout of its own
        queue.add_limit_hints(RedisLimitHints(client))
        queue.register_handler("O", lambda job: None)
        queue.enqueue_many({"job_type": "O", "organization": "a"} for _ in range(4))
        queue.run_once()
        server.freeze()
        thaw = threading.Timer(3.0, server.thaw)
        thaw.start()
        began = time.monotonic()
        queue.run_once()
        stalled = time.monotonic() - began
        thaw.cancel()
    finally:
        server.stop()
    assert stalled < 1.5, stalled  # timeout_s (0.25 s) and the claim, not the 3 s of the freeze


def run_limited(make_queue: Any, hints: Any) -> float:
    """How long 24 jobs of 4 keys capped at 2 take on 4 threads."""
    queue = make_queue(concurrency=4)
    queue.limit("per-org", key="organization", max_running=2)
    if hints is not None:
        queue.add_limit_hints(hints)
    queue.register_handler("O", lambda job: None)
    queue.enqueue_many({"job_type": "O", "organization": f"org{i % 4}"} for i in range(24))
    began = time.monotonic()
    queue.start_polling()
    wait_until(lambda: queue.counts()["completed"] >= 24, timeout=120, interval=0.05, what="24 jobs completed")
    took = time.monotonic() - began
    queue.stop(timeout=10)
    queue.store.collection.delete_many({})
    return took


def test_a_redis_that_answers_slowly_is_given_up_like_one_that_fails(make_queue, redis_prefix, caplog) -> None:
    import redis

    from mongo_job_queue.contrib.redis import RedisLimitHints, hints

    _, prefix = redis_prefix
    proxy = SlowProxy(0.15)  # each reply 0.15 s late: within timeout_s (0.25 s), never an error
    slow = RedisLimitHints(redis.Redis(port=proxy.port), prefix=prefix)
    try:
        without = run_limited(make_queue, None)
        with caplog.at_level(logging.WARNING, logger="mongo_job_queue.contrib.redis.hints"):
            took = run_limited(make_queue, slow)
    finally:
        proxy.close()
    assert took < 3 * without + 1.0, (without, took)  # SLOW_IN_A_ROW slow calls per pause, not one per claim
    assert slow.failures == 0 and slow.slow_calls >= hints.SLOW_IN_A_ROW  # answered, but slowly
    warnings = [r.getMessage() for r in caplog.records if r.name == "mongo_job_queue.contrib.redis.hints"]
    assert len(warnings) == 1 and "slow_ms" in warnings[0], warnings


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_hints_lock_held_by_a_parent_thread_at_fork_is_fresh_in_the_child() -> None:
    redis = pytest.importorskip("redis")
    from mongo_job_queue.contrib.redis import RedisLimitHints

    closed = redis.Redis(host="127.0.0.1", port=1)  # every call fails: the failure path takes the lock
    hints = RedisLimitHints(closed, timeout_s=0.2)
    bound = hints.bind("db.jobs", 30_000)
    hints._lock.acquire()  # as a parent thread in the middle of recording a failure

    def body() -> None:
        assert bound.look(["a"], datetime(2030, 1, 1)) == {}
        assert hints.failures == 1

    try:
        assert run_forked(body, timeout=30) == "ok"
    finally:
        hints._lock.release()
