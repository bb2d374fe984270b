"""Absurd delays are refused at enqueue and clamped when computed: a job is never left ``processing``."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from helpers import wait_until

from mongo_job_queue import InvalidJobError, RetryJob
from mongo_job_queue.clock import to_naive_utc, utcnow

pytestmark = pytest.mark.integration

NINETY_NINE_YEARS = timedelta(days=99 * 365)


def _settled(job_model: Any, job_id: Any, status: str) -> Any:
    doc = job_model.objects.get(id=job_id)
    return doc if doc.status == status else None


@pytest.mark.parametrize(
    ("name", "handler_kwargs", "raise_exc"),
    [
        ("RetryJob(10**15)", {}, lambda: RetryJob(delay_ms=10**15)),
        ("RetryJob(10**400)", {}, lambda: RetryJob(delay_ms=10**400)),
        ("wait=inf", {"wait": lambda state: float("inf")}, lambda: RuntimeError("boom")),
        ("wait=1e13", {"wait": lambda state: 1e13}, lambda: RuntimeError("boom")),
    ],
)
def test_a_huge_retry_delay_leaves_the_job_pending_far_in_the_future(
    make_queue, job_model, name: str, handler_kwargs: dict[str, Any], raise_exc: Any
) -> None:
    queue = make_queue()
    runs = []

    def handler(job: Any) -> None:
        runs.append(job.id)
        raise raise_exc()

    queue.register_handler("ABSURD", handler, **handler_kwargs)
    job = queue.enqueue("ABSURD", {})
    queue.start_polling()
    doc = wait_until(lambda: _settled(job_model, job.id, "pending") if runs else None, timeout=20, what=name)
    assert queue.stop(timeout=10)
    assert doc.attempts == 1
    # The model reads aware datetimes on a tz_aware connection (the --tz-aware run).
    assert to_naive_utc(doc.run_at) > utcnow() + NINETY_NINE_YEARS, doc.run_at
    assert doc.last_error is not None
    assert runs == [job.id]


@pytest.mark.parametrize(
    "wait",
    [
        pytest.param(lambda state: float("nan"), id="nan"),
        pytest.param(lambda state: 1 / 0, id="raises"),
        pytest.param(lambda state: None, id="none"),
    ],
)
def test_a_broken_wait_strategy_falls_back_to_the_default_backoff(make_queue, job_model, wait: Any) -> None:
    queue = make_queue()
    calls = []
    done = threading.Event()

    def flaky(job: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        done.set()
        return "ok"

    queue.register_handler("FLAKY", flaky, wait=wait)
    job = queue.enqueue("FLAKY", {})
    queue.start_polling()
    doc = wait_until(lambda: _settled(job_model, job.id, "completed"), timeout=20)
    assert doc.attempts == 2
    assert doc.result == "ok"
    # The failure was written back as a retry, not left to a lease rescue.
    assert [e.type for e in doc.errors] == ["builtins.RuntimeError"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay_ms": 10**15},
        {"delay_ms": 10**400},
        {"delay_ms": 10**5000},
        {"unique_key": "k", "unique_for_ms": 10**15},
    ],
)
def test_absurd_delays_at_enqueue_are_refused_before_anything_is_written(make_queue, job_model, kwargs) -> None:
    queue = make_queue()
    with pytest.raises(InvalidJobError, match="100 years"):
        queue.enqueue("ANY", {}, **kwargs)
    with pytest.raises(InvalidJobError, match="100 years"):
        queue.enqueue_many([{"job_type": "ANY", "delay_ms": 10**15}])
    assert job_model.objects.count() == 0


@pytest.mark.parametrize(
    "run_at",
    [
        pytest.param(datetime.max, id="naive-max"),
        pytest.param(datetime.max.replace(tzinfo=timezone.utc), id="aware-max"),
        pytest.param(utcnow() + timedelta(days=101 * 365), id="101-years"),
    ],
)
def test_a_run_at_more_than_100_years_ahead_is_refused_before_anything_is_written(
    make_queue, job_model, run_at
) -> None:
    # Stored, datetime.max could not be read back on a connection with a zone east of UTC (the app's own reads).
    queue = make_queue()
    with pytest.raises(InvalidJobError, match="100 years"):
        queue.enqueue("ANY", {}, run_at=run_at)
    with pytest.raises(InvalidJobError, match=r"jobs\[0\]: .*100 years"):
        queue.enqueue_many([{"job_type": "ANY", "run_at": run_at}])
    assert job_model.objects.count() == 0
    far = utcnow() + NINETY_NINE_YEARS  # within the bound: accepted, stored as given
    assert to_naive_utc(queue.enqueue("ANY", {}, run_at=far).run_at) == far
