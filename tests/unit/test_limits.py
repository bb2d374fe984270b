"""Limit definitions: every bad argument is refused with its name, and nothing is stored."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from bson.int64 import Int64

from mongo_job_queue import Limit, LimitError
from mongo_job_queue.errors import InvalidJobError, Throttled
from mongo_job_queue.limits import parse_rate
from mongo_job_queue.model import LeaseOwner
from mongo_job_queue.store.limiter import limiter_id


def _stored(queue: Any) -> list[dict[str, Any]]:
    return list(queue.store.limits.definitions_collection.find())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": "organization", "max_running": 0}, "max_running must be an int >= 1"),
        ({"key": "organization", "max_running": -3}, "max_running must be an int >= 1"),
        ({"key": "organization", "max_running": True}, "max_running must be an int >= 1"),
        ({"key": "organization", "max_running": 2.5}, "max_running must be an int >= 1"),
        ({"key": "", "max_running": 1}, "limit key must be a job field name"),
        ({"key": "$where", "max_running": 1}, "limit key must be a job field name"),
        ({"key": "a..b", "max_running": 1}, "limit key must be a job field name"),
        ({"key": "organization"}, "needs max_running, rate or fair=True"),
        ({"rate": "100"}, "rate must look like '100/min'"),
        ({"rate": "0/min"}, "a count and a period of at least 1"),
        ({"rate": "10/fortnight"}, "rate must look like '100/min'"),
        ({"rate": "ten/min"}, "rate must look like '100/min'"),
        ({"rate": 100}, "rate must be a str"),
        ({"rate": "5/0s"}, "a count and a period of at least 1"),
        ({"rate": "5/s", "burst": 0}, "burst must be an int from 1"),
        ({"max_running": 1, "job_types": [""]}, "job_types must be non-empty strs"),
        ({"fair": True}, "fair=True needs a key"),
        ({"max_running": 1, "color": "red"}, "unknown limit option(s) color"),
        ({"key": "organization", "max_running": 2**70}, "max_running must be an int >= 1 and <= 1000000"),
        ({"key": "organization", "max_running": 1_000_001}, "max_running must be an int >= 1 and <= 1000000"),
        ({"rate": "1/4000000d"}, "rate period must be at most 366 days"),
        ({"rate": "1/999999999d"}, "rate period must be at most 366 days"),
        ({"rate": "1/367d"}, "rate period must be at most 366 days"),
        ({"rate": "5/mss"}, "rate must look like '100/min'"),
        ({"rate": "5/ss"}, "rate must look like '100/min'"),
        ({"rate": "5/hs"}, "rate must look like '100/min'"),
        ({"key": "status", "max_running": 1}, "names a field of the library"),
        ({"key": "attempts", "max_running": 1}, "names a field of the library"),
        ({"key": "lease_token", "max_running": 1}, "names a field of the library"),
        ({"key": "run_at", "max_running": 1}, "names a field of the library"),
        ({"key": "queue", "max_running": 1}, "names a field of the library"),
        ({"key": "mutex_key", "max_running": 1}, "names a field of the library"),
        ({"key": "progress.done", "max_running": 1}, "names a field of the library"),
        ({"key": "data", "max_running": 1}, "names a field of the library"),
    ],
)
def test_bad_limits_are_refused_by_name_and_nothing_is_stored(
    queue: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(LimitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        queue.limit("per-org", **options)
    assert _stored(queue) == []


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "a\x1fb", None, 7, "mutex"])
def test_bad_limit_names_are_refused(queue: Any, name: Any) -> None:
    with pytest.raises(LimitError, match="limit name"):
        queue.limit(name, max_running=1)
    assert _stored(queue) == []


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [("100/min", (100, 60_000)), ("5/s", (5, 1_000)), ("3/10s", (3, 10_000)), ("1000/hours", (1000, 3_600_000)),
     ("20 / second", (20, 1_000)), ("7/day", (7, 86_400_000)), ("2/ms", (2, 1)), ("4/mins", (4, 60_000)),
     ("1/366d", (1, 366 * 86_400_000)), ("1000/s", (1000, 1_000))],
)  # fmt: skip
def test_rates_parse(rate: str, parsed: tuple[int, int]) -> None:
    assert parse_rate(rate) == parsed


def test_a_limit_is_stored_read_back_and_removed(queue: Any) -> None:
    limit = queue.limit("per-org", key="organization", max_running=5, rate="100/min")
    assert limit == Limit("per-org", key="organization", max_running=5, rate="100/min")
    assert queue.limits()["definitions"] == [limit]
    replaced = queue.limit("per-org", key="organization", max_running=2)
    assert queue.limits()["definitions"] == [replaced]
    assert queue.remove_limit("per-org") is True
    assert queue.remove_limit("per-org") is False
    assert _stored(queue) == []


@pytest.mark.parametrize("key", ["", 5, "k" * 1001])
def test_bad_mutex_keys_are_refused_and_nothing_is_written(queue: Any, key: Any) -> None:
    with pytest.raises(InvalidJobError, match="mutex_key must be a non-empty str"):
        queue.enqueue("T", {}, mutex_key=key)
    assert queue.counts()["pending"] == 0
    assert _stored(queue) == []


def test_a_mutex_key_is_stored_on_the_job(queue: Any) -> None:
    job = queue.enqueue("T", {}, mutex_key="invoice:42")
    assert job.mutex_key == "invoice:42"
    [many] = queue.enqueue_many([{"job_type": "T", "mutex_key": "invoice:43"}])
    assert many.mutex_key == "invoice:43"


@pytest.mark.parametrize("delay", [-1, 1.5, True, None])
def test_throttled_needs_a_delay(delay: Any) -> None:
    with pytest.raises(TypeError, match="retry_after_ms must be an int >= 0"):
        Throttled(delay)


def test_a_throttled_job_waits_its_delay_and_uses_no_attempt(queue: Any, clock: Any) -> None:
    calls: list[int] = []

    @queue.handler("T")
    def run(job: Any) -> None:
        calls.append(job.attempts)
        if len(calls) == 1:
            job.throttle(2_000)

    job = queue.enqueue("T", {})
    queue.run_once()
    stored = queue.get_job(job.id)
    assert (stored.status, stored.attempts, stored.errors) == ("pending", 0, [])
    assert stored.run_at == clock() + timedelta(milliseconds=2_000)
    assert queue.run_once() is None  # not due yet
    clock.advance(ms=2_000)
    assert queue.run_once().status == "completed"
    assert calls == [1, 1]


def test_a_key_under_data_is_the_users_own(queue: Any) -> None:
    assert queue.limit("per-tenant", key="data.tenant", max_running=1).key == "data.tenant"


@pytest.mark.parametrize(("a", "b"), [(1, 1.0), (7, Int64(7)), (-3.0, -3)])
def test_equal_numbers_share_one_limiter(a: Any, b: Any) -> None:
    """MongoDB finds 1 and 1.0 equal: so does the limiter id, else max_running=1 admits one run of each."""
    assert limiter_id("cap", a) == limiter_id("cap", b)


@pytest.mark.parametrize(("a", "b"), [(1, 1.5), (1, "1"), (1, True), (0, False)])
def test_unequal_values_get_their_own_limiters(a: Any, b: Any) -> None:
    assert limiter_id("cap", a) != limiter_id("cap", b)


@pytest.mark.usefixtures("mongomock_bulk_write")  # its bulk runs each UpdateOne through update_one
def test_a_limited_claims_conditional_writes_name_the_job_first(queue: Any, monkeypatch: Any) -> None:
    """The claim and the reserved starts filter by ``_id`` first: a server that plans by the first field scans less.

    The embedded test server planned the claim's ``status``-first filter as
    a scan of every pending job (47 ms a write with 360 of them, 2 ms by
    ``_id``), which held three processes to 2.1-3.7 limited starts/s.
    """
    jobs = queue.store.collection
    filters: list[list[str]] = []
    update_one = type(jobs).update_one

    def spy_update(self: Any, filt: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name == jobs.name and "attempts" in filt:
            filters.append(list(filt))
        return update_one(self, filt, *args, **kwargs)

    monkeypatch.setattr(type(jobs), "update_one", spy_update)
    queue.limit("api", job_types=["T"], rate="2/s")
    queue.enqueue_many([{"job_type": "T"} for _ in range(3)])
    claimed = queue.store.jobs.claim_batch(["T"], ["default"], LeaseOwner.current(), 3)
    assert len(claimed) == 1  # the other two wait for their starts, reserved in one write
    assert len(filters) == 3, filters  # the claim, and the two reserved starts
    assert all(filt[0] == "_id" for filt in filters), filters
