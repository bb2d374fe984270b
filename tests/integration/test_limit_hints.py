"""Redis limit hints: they skip MongoDB round trips, and hints that lie never break a cap, lose a job or use an attempt.

Against the real Redis (127.0.0.1:6379, keys under a prefix of each test's
own), and a throwaway server where the test flushes or stops it.
"""

from __future__ import annotations

import calendar
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until
from redis_support import RedisServer, forget, fresh_prefix, shared_client

from mongo_job_queue.store import holders, rates
from mongo_job_queue.store.limiter import limiter_id

pytestmark = pytest.mark.integration

#: A hint is trusted this long in these tests (the default is 1 s).
TTL_MS = 600


@pytest.fixture
def client() -> Iterator[Any]:
    """The shared Redis; the test's hints keep their keys under :data:`PREFIX`'s value for it, deleted after."""
    client = shared_client()
    PREFIX[client] = fresh_prefix()
    yield client
    forget(client, PREFIX.pop(client))


#: The key prefix of the running test, by client.
PREFIX: dict[Any, str] = {}


def hints_of(client: Any) -> Any:
    from mongo_job_queue.contrib.redis import RedisLimitHints

    return RedisLimitHints(client, prefix=PREFIX[client], ttl_ms=TTL_MS)


class Peaks:
    """The runs in flight per key, the most seen at once, and every start."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: Counter[Any] = Counter()
        self.peak: Counter[Any] = Counter()
        self.done = 0
        #: Every start the rate's GCRA gave (spent or reserved), by MongoDB's answers.
        self.starts: list[Any] = []

    def record_starts(self, monkeypatch: pytest.MonkeyPatch, lid: str) -> None:
        spend, reserve = rates.spend, rates.reserve

        def spent(limiters: Any, at: str, *args: Any) -> Any:
            start = spend(limiters, at, *args)
            if at == lid and start is not None:
                with self.lock:
                    self.starts.append(start)
            return start

        def reserved(limiters: Any, at: str, *args: Any) -> Any:
            slots = reserve(limiters, at, *args)
            if at == lid:
                with self.lock:
                    self.starts.extend(slots)
            return slots

        monkeypatch.setattr(rates, "spend", spent)
        monkeypatch.setattr(rates, "reserve", reserved)

    def run(self, key: Any, seconds: float) -> None:
        with self.lock:
            self.running[key] += 1
            self.peak[key] = max(self.peak[key], self.running[key])
        time.sleep(seconds)
        with self.lock:
            self.running[key] -= 1
            self.done += 1


def ms(when: Any) -> int:
    """``when`` (naive UTC or aware) in ms since the epoch, as the hints store it."""
    return calendar.timegm(when.utctimetuple()) * 1000 + when.microsecond // 1000


def test_the_scripts_keep_a_release_over_a_late_full_and_the_greatest_rate(client) -> None:
    from datetime import datetime, timedelta

    bound = hints_of(client).bind("db.jobs", lease_ms=30_000)
    now = datetime(2030, 1, 1)
    later = now + timedelta(milliseconds=50)
    bound.saw_full(["a", "b"], now)
    assert {lid: hint.full for lid, hint in bound.look(["a", "b", "c"], now).items()} == {"a": True, "b": True}
    assert 0 < client.pttl(bound.key("f", "a")) <= TTL_MS
    bound.freed(["a"], later)
    assert "a" not in bound.look(["a"], later)
    bound.saw_full(["a"], now)  # observed before the release, written after it: not kept
    assert "a" not in bound.look(["a"], later)
    bound.saw_full(["a"], later + timedelta(milliseconds=1))  # a refusal after the release is kept
    assert bound.look(["a"], later + timedelta(milliseconds=1))["a"].full
    bound.freed(["b"], now - timedelta(milliseconds=5))  # a release older than the full hint leaves it
    assert bound.look(["b"], now)["b"].full

    bound.saw_rate("r", now + timedelta(milliseconds=300), now)
    bound.saw_rate("r", now + timedelta(milliseconds=100), now)  # a lower bound lower than the one kept
    assert bound.look(["r"], now)["r"].opens_at == now + timedelta(milliseconds=300)
    assert 0 < client.pttl(bound.key("r", "r")) <= 300
    bound.saw_rate("r", now + timedelta(hours=1), now)  # kept at most the trust window ahead
    assert bound.look(["r"], now)["r"].opens_at == now + timedelta(milliseconds=TTL_MS)
    # Values set by hand that expire within the window: trusted no longer than it from their stamps.
    client.set(bound.key("f", "x"), ms(now), px=TTL_MS)
    client.set(bound.key("r", "x"), ms(now + timedelta(milliseconds=TTL_MS)), px=TTL_MS)
    assert bound.look(["x"], now) == {"x": (True, now + timedelta(milliseconds=TTL_MS))}
    assert bound.look(["x"], now + timedelta(milliseconds=TTL_MS + 1)) == {}
    client.set(bound.key("r", "x"), ms(now + timedelta(days=1)), px=TTL_MS)
    assert bound.look(["x"], now) == {"x": (True, None)}
    client.set(bound.key("f", "y"), b"garbage", px=TTL_MS)
    assert bound.look(["y"], now) == {}
    # With no expiry, or a longer one, the hints never wrote them: not read, whatever they say.
    client.set(bound.key("f", "z"), ms(now))
    client.set(bound.key("r", "z"), ms(now + timedelta(milliseconds=TTL_MS)), px=60_000)
    assert bound.look(["z"], now) == {}
    # One collection's hints are not another's; the lease caps the window.
    assert hints_of(client).bind("db.other", 30_000).look(["a"], later) == {}
    assert hints_of(client).bind("db.jobs", 200).ttl_ms == 200


def test_a_full_hint_skips_the_push_and_delays_the_job_only_while_trusted(make_queue, job_model, client, monkeypatch):
    queue = make_queue(poll_interval_max_ms=20_000)
    queue.limit("solo", key="organization", max_running=1)
    queue.add_limit_hints(hints_of(client))
    bound = queue.store.limits.hints
    pushes: list[str] = []
    real_push = holders.push
    monkeypatch.setattr(
        holders, "push", lambda limiters, jobs, lid, *a: pushes.append(lid) or real_push(limiters, jobs, lid, *a)
    )
    started: list[Any] = []
    queue.register_handler("O", lambda job: started.append(queue.store.now()))
    queue.start_polling()
    wait_until(lambda: queue.worker._idle.is_set(), timeout=10, what="the poller idle, its next poll 20 s away")
    # A lie, set by hand as the hints write one: "full", for the trust window.
    lid = limiter_id("solo", "acme")
    set_at = queue.store.now()
    client.set(bound.key("f", lid), ms(set_at), px=TTL_MS)
    job = queue.enqueue("O", {}, organization="acme")  # wakes the poller: its claim skips on the hint
    wait_until(lambda: started, timeout=10, what="the job ran once the hint was no longer trusted")
    waited = (started[0] - set_at).total_seconds()
    assert TTL_MS / 1000 - 0.05 <= waited <= TTL_MS / 1000 + 1.5, waited  # the poller looked again soon after
    assert pushes == [lid]  # no push while the hint was trusted; one after
    assert job_model.objects.get(id=job.id).attempts == 1
    wait_until(lambda: queue.counts()["completed"] == 1, timeout=10)
    # MongoDB's answers are written back: a run that fills the limiter marks it full, its release clears it.
    # The release follows the handler's return; the grouped completion write may land first (CI, 2026-12-04):
    # wait for its mark (kept a trust window), then the full hint must be gone, not merely untrusted yet.
    wait_until(lambda: client.get(bound.key("x", lid)), timeout=10, interval=0.005, what="the release's mark")
    assert client.get(bound.key("f", lid)) is None
    assert bound.look([lid], queue.store.now()) == {}


def test_a_closed_rate_hint_skips_the_spend_and_the_job_waits_without_an_attempt(
    make_queue, job_model, client, monkeypatch
) -> None:
    queue = make_queue(poll_interval_max_ms=20_000)
    queue.limit("api", key="organization", rate="100/s")
    queue.add_limit_hints(hints_of(client))
    bound = queue.store.limits.hints
    spends: list[str] = []
    real_spend = rates.spend
    monkeypatch.setattr(rates, "spend", lambda limiters, lid, *a: spends.append(lid) or real_spend(limiters, lid, *a))
    lid = limiter_id("api", "acme")
    started: list[Any] = []
    queue.register_handler("O", lambda job: started.append(queue.store.now()))
    queue.start_polling()
    wait_until(lambda: queue.worker._idle.is_set(), timeout=10, what="the poller idle, its next poll 20 s away")
    set_at = queue.store.now()
    client.set(bound.key("r", lid), ms(set_at) + TTL_MS - 50, px=TTL_MS)  # "closed", by hand
    job = queue.enqueue("O", {}, organization="acme")
    wait_until(lambda: started, timeout=10, what="the job ran once the hint was no longer trusted")
    waited = (started[0] - set_at).total_seconds()
    assert (TTL_MS - 100) / 1000 <= waited <= TTL_MS / 1000 + 1.5, waited
    assert spends == [lid]  # none while the hint was trusted
    assert job_model.objects.get(id=job.id).attempts == 1


#: The limiters of :func:`run_capped`.
LIMITERS = [limiter_id("per-org", f"org{n}") for n in range(3)] + [
    limiter_id("mutex", "invoice:42"),
    limiter_id("api", ""),
]


def run_capped(make_queue, monkeypatch, hints: Any, before: Any = None, during: Any = None, jobs: int = 40) -> Peaks:
    """Two queues of 3 threads on 3 keys of max_running=2, a mutex key and a rate of 20/s: the caps, exactly."""
    queues = [make_queue(concurrency=3, lease_ms=10_000) for _ in range(2)]
    queues[0].limit("per-org", key="organization", max_running=2)
    queues[0].limit("api", job_types=["R"], rate="20/s")
    peaks = Peaks()
    peaks.record_starts(monkeypatch, limiter_id("api", ""))
    for queue in queues:
        if hints is not None:
            queue.add_limit_hints(hints)
        queue.register_handler("O", lambda job: peaks.run(job.organization, 0.15))
        queue.register_handler("M", lambda job: peaks.run(job.mutex_key, 0.03))
        queue.register_handler("R", lambda job: peaks.run(None, 0))  # the rate is checked by admission times
    queues[0].enqueue_many({"job_type": "O", "organization": f"org{n % 3}"} for n in range(jobs))
    queues[0].enqueue_many({"job_type": "M", "mutex_key": "invoice:42"} for _ in range(jobs // 4))
    queues[0].enqueue_many({"job_type": "R"} for _ in range(jobs // 4))
    if before is not None:
        before(queues)
    for queue in queues:
        queue.start_polling()
    total = jobs + 2 * (jobs // 4)
    if during is not None:
        wait_until(lambda: peaks.done >= total // 3, timeout=60, what="a third ran")
        during(queues)
    wait_until(lambda: queues[0].counts()["completed"] >= total, timeout=90, interval=0.1, what="every job ran")
    return peaks


def assert_exact(peaks: Peaks, job_model: Any, reached: bool = True) -> None:
    """No cap ever passed (and one reached); every job ran once; the rate's starts 50 ms apart (server time)."""
    orgs = [peaks.peak[f"org{n}"] for n in range(3)]
    assert max(orgs) <= 2 and peaks.peak["invoice:42"] == 1, peaks.peak
    assert not reached or max(orgs) == 2, peaks.peak  # the keys were contended
    jobs = list(job_model.objects)
    assert {j.attempts for j in jobs} == {1}
    assert {j.status for j in jobs} == {"completed"}
    # Every rate-limited run had a start from MongoDB's GCRA, and those starts are one interval apart.
    assert len(peaks.starts) >= sum(1 for j in jobs if j.type == "R")
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sorted(peaks.starts))]
    assert min(gaps) >= 0.0499, gaps


def test_caps_hold_exactly_with_hints(make_queue, monkeypatch, job_model, client) -> None:
    peaks = run_capped(make_queue, monkeypatch, hints_of(client))
    assert_exact(peaks, job_model)


def test_caps_hold_exactly_when_every_hint_says_never_full(make_queue, monkeypatch, job_model, client) -> None:
    # Releases stamped far in the future: no full hint is ever written, every admission asks MongoDB.
    def lie(queues: list[Any]) -> None:
        lying = queues[0].store.limits.hints
        for lid in LIMITERS:
            client.set(lying.key("x", lid), str(2**60))
            client.delete(lying.key("f", lid), lying.key("r", lid))

    peaks = run_capped(make_queue, monkeypatch, hints_of(client), before=lie, during=lie)
    assert_exact(peaks, job_model)


def test_caps_hold_exactly_when_every_hint_says_always_full(make_queue, monkeypatch, job_model, client) -> None:
    # Full hints set by hand now and then, as the hints write them: each delays for at most the trust window.
    stop = threading.Event()

    def lie(queues: list[Any]) -> None:
        lying = queues[0].store.limits.hints
        ids = LIMITERS

        def keep_lying() -> None:
            while not stop.wait(0.8):
                now = ms(queues[0].store.now())
                for lid in ids:
                    client.set(lying.key("f", lid), now, px=TTL_MS)
                    client.set(lying.key("r", lid), now + TTL_MS, px=TTL_MS)

        threading.Thread(target=keep_lying, daemon=True).start()

    try:
        peaks = run_capped(make_queue, monkeypatch, hints_of(client), during=lie)
    finally:
        stop.set()
    assert_exact(peaks, job_model, reached=False)  # the lies may keep runs of a key apart


def test_caps_hold_exactly_when_redis_is_flushed_then_stopped_mid_run(
    make_queue, monkeypatch, job_model, caplog
) -> None:
    redis = pytest.importorskip("redis")
    server = RedisServer()
    server.start()
    from mongo_job_queue.contrib.redis import RedisLimitHints

    client = redis.Redis(port=server.port, socket_timeout=0.3, socket_connect_timeout=0.3)
    hints = RedisLimitHints(client, ttl_ms=TTL_MS)
    flushed = threading.Event()

    def flush_then_stop(queues: list[Any]) -> None:
        client.flushall()
        flushed.set()
        time.sleep(0.3)  # a few claims against the empty server
        server.shutdown_nosave()

    try:
        with caplog.at_level(logging.WARNING, logger="mongo_job_queue.contrib.redis.hints"):
            peaks = run_capped(make_queue, monkeypatch, hints, during=flush_then_stop)
    finally:
        server.stop()
    assert flushed.is_set()
    assert_exact(peaks, job_model)
    assert hints.failures >= 1
    warnings = [r for r in caplog.records if r.name == "mongo_job_queue.contrib.redis.hints"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage, not once per claim


def test_a_redis_that_is_down_from_the_start_costs_one_warning_and_no_claim(
    make_queue, monkeypatch, job_model, caplog
) -> None:
    redis = pytest.importorskip("redis")
    from mongo_job_queue.contrib.redis import RedisLimitHints

    closed = redis.Redis(host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue.contrib.redis.hints"):
        peaks = run_capped(make_queue, monkeypatch, RedisLimitHints(closed, ttl_ms=TTL_MS), jobs=24)
    assert_exact(peaks, job_model)
    warnings = [r for r in caplog.records if r.name == "mongo_job_queue.contrib.redis.hints"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_a_frozen_redis_holds_no_claim_longer_than_the_hints_timeout(make_queue, monkeypatch, job_model) -> None:
    redis = pytest.importorskip("redis")
    from mongo_job_queue.contrib.redis import RedisLimitHints

    server = RedisServer()
    server.start()
    # The client's own settings would wait forever on a frozen server: the hints bound their calls (timeout_s).
    hints = RedisLimitHints(redis.Redis(port=server.port), ttl_ms=TTL_MS)
    frozen_at: list[float] = []

    def freeze(queues: list[Any]) -> None:
        server.freeze()
        frozen_at.append(time.monotonic())

    try:
        peaks = run_capped(make_queue, monkeypatch, hints, during=freeze)
        took = time.monotonic() - frozen_at[0]
    finally:
        server.stop()
    assert_exact(peaks, job_model)
    assert hints.failures >= 1
    assert took < 30, took  # the remaining two thirds ran on MongoDB alone, not after the socket's default
