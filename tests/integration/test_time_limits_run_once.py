"""Time limits of ``run_once()``: the watchdog thread raises the limit in the calling thread, never replaces it.

The watchdog is a thread of its own beside the caller's, so these run over
the wire (mongomock is not safe for concurrent use).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import tenacity

from mongo_job_queue import JobTimeLimitExceeded

pytestmark = pytest.mark.integration

TIME_LIMIT_ERROR = "mongo_job_queue.errors.JobTimeLimitExceeded"


def _loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.005)


def test_run_once_raises_the_limit_in_the_calling_thread_and_the_policy_retries(make_queue: Any) -> None:
    queue = make_queue()
    runs: list[int] = []

    @queue.handler("T", time_limit_ms=100, max_retries=1, wait=tenacity.wait_fixed(0))
    def handler(job: Any) -> str:
        runs.append(job.attempts)
        if job.attempts == 1:
            _loop(30)
        return "done"

    job = queue.enqueue("T", {})
    started = time.monotonic()
    first = queue.run_once()
    assert time.monotonic() - started < 10
    assert first.status == "pending" and first.last_error.type == TIME_LIMIT_ERROR
    assert first.last_error.message == "the handler ran past its time limit of 100 ms"
    assert "_loop" in first.last_error.traceback
    assert queue.run_once().status == "completed"
    assert runs == [1, 2] and queue.get_job(job.id).result == "done"


def test_a_retry_policy_that_does_not_match_the_exception_fails_the_job(make_queue: Any) -> None:
    queue = make_queue()
    queue.register_handler(
        "T", lambda job: _loop(30), time_limit_ms=100, retry=tenacity.retry_if_exception_type(OSError)
    )
    job = queue.enqueue("T", {}, max_retries=5)
    assert queue.run_once().status == "failed"
    assert queue.get_job(job.id).last_error.type == TIME_LIMIT_ERROR


def test_a_handler_that_catches_the_exception_and_returns_completes(
    make_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue()

    def handler(job: Any) -> str:
        try:
            _loop(30)
        except JobTimeLimitExceeded:
            return "cleaned up"
        return "never"

    queue.register_handler("T", handler, time_limit_ms=100)
    queue.enqueue("T", {})
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
        done = queue.run_once()
    assert done.status == "completed" and done.result == "cleaned up"
    assert "caught JobTimeLimitExceeded and returned" in caplog.text


def test_a_stuck_single_step_is_not_abandoned_its_outcome_is_recorded(
    make_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(time_limit_grace_ms=50)
    queue.register_handler("T", lambda job: time.sleep(0.6), time_limit_ms=50, max_retries=0)
    job = queue.enqueue("T", {})
    with caplog.at_level(logging.WARNING, logger="mongo_job_queue"):
        done = queue.run_once()  # the caller's thread cannot be replaced: it runs to the end of the sleep
    assert done.status == "failed" and done.last_error.type == TIME_LIMIT_ERROR
    assert done.lease_token is not None  # an ordinary outcome write, not an abandonment
    assert "cannot be replaced, so it is not abandoned" in caplog.text
    assert queue.get_job(job.id).attempts == 1
