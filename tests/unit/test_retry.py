"""Retries: backoff bounds, max_retries, tenacity overrides, RetryJob/FailJob, error records and RetryPolicy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import tenacity
from conftest import START, raw_doc, raw_docs

from mongo_job_queue import FailJob, QueueConfig, RetryJob
from mongo_job_queue.retry import RetryPolicy


class Boom(Exception):
    pass


def _delay_ms(doc: dict[str, Any], now: Any) -> int:
    return int((doc["run_at"] - now) / timedelta(milliseconds=1))


def _failing(tokens: list[str] | None = None, exc: type[BaseException] = ValueError) -> Any:
    calls = {"n": 0}

    def handler(job: Any) -> None:
        calls["n"] += 1
        if tokens is not None:
            tokens.append(job.lease_token)
        raise exc(f"boom {calls['n']}")

    return handler


# -- the default policy through the worker ------------------------------------


def test_failure_is_rescheduled_with_exponential_backoff_then_failed(queue: Any, clock: Any) -> None:
    tokens: list[str] = []
    queue.register_handler("t", _failing(tokens))
    queue.enqueue("t")
    for attempt in range(1, 4):
        done = queue.run_once()
        assert done.status == "pending"
        doc = raw_doc()
        assert doc["status"] == "pending"
        assert doc["attempts"] == attempt
        low = 1_000 * 2 ** (attempt - 1)
        assert low <= _delay_ms(doc, clock.now) <= low + 1_000
        assert "lease_expires_at" not in doc
        assert len(doc["errors"]) == attempt
        error = doc["errors"][-1]
        assert error["type"] == "builtins.ValueError"
        assert error["message"] == f"boom {attempt}"
        assert error["attempt"] == attempt
        assert error["at"] == clock.now
        assert error["lease_token"] == tokens[-1]
        assert "Traceback (most recent call last)" in error["traceback"]
        assert f"ValueError: boom {attempt}" in error["traceback"]
        assert doc["last_error"] == error
        assert queue.run_once() is None  # not due before its run_at
        clock.now = doc["run_at"]
    done = queue.run_once()
    assert done.status == "failed"
    doc = raw_doc()
    assert doc["status"] == "failed"
    assert doc["attempts"] == 4  # max_retries + 1
    assert [e["attempt"] for e in doc["errors"]] == [1, 2, 3, 4]
    assert doc["last_error"]["message"] == "boom 4"
    assert doc["finished_at"] == clock.now
    assert len(set(tokens)) == 4  # a fresh lease per attempt
    clock.advance(seconds=100_000)
    assert queue.run_once() is None


def test_backoff_is_capped_by_retry_max_delay(make_queue: Any, clock: Any) -> None:
    queue = make_queue(retry_delay_ms=1_000, retry_max_delay_ms=3_000, max_retries=6)
    queue.register_handler("t", _failing())
    queue.enqueue("t")
    delays = []
    for _ in range(5):
        queue.run_once()
        doc = raw_doc()
        delays.append(_delay_ms(doc, clock.now))
        clock.now = doc["run_at"]
    assert 1_000 <= delays[0] <= 2_000
    assert 2_000 <= delays[1] <= 3_000
    assert delays[2:] == [3_000, 3_000, 3_000]


def test_job_max_retries_zero_fails_on_first_error(queue: Any) -> None:
    queue.register_handler("t", _failing())
    queue.enqueue("t", max_retries=0)
    assert queue.run_once().status == "failed"
    doc = raw_doc()
    assert doc["attempts"] == 1
    assert len(doc["errors"]) == 1


def test_handler_max_retries_applies_to_its_jobs(make_queue: Any, clock: Any) -> None:
    queue = make_queue(max_retries=5)
    queue.register_handler("t", _failing(), max_retries=1, wait=tenacity.wait_fixed(0))
    queue.enqueue("t")
    assert queue.drain() == 2
    assert raw_doc()["status"] == "failed"
    assert raw_doc()["attempts"] == 2


# -- tenacity overrides ---------------------------------------------------------


def test_wait_fixed_gives_exactly_that_delay(queue: Any, clock: Any) -> None:
    queue.register_handler("t", _failing(), wait=tenacity.wait_fixed(5))
    queue.enqueue("t")
    queue.run_once()
    assert raw_doc()["run_at"] == clock.now + timedelta(seconds=5)


def test_custom_wait_is_not_capped_by_retry_max_delay(make_queue: Any, clock: Any) -> None:
    queue = make_queue(retry_max_delay_ms=10_000)
    queue.register_handler("t", _failing(), wait=tenacity.wait_fixed(60))
    queue.enqueue("t")
    queue.run_once()
    assert raw_doc()["run_at"] == clock.now + timedelta(seconds=60)


def test_retry_predicate_fails_other_exceptions_at_once(queue: Any) -> None:
    queue.register_handler("value", _failing(exc=ValueError), retry=tenacity.retry_if_exception_type(IOError))
    queue.register_handler("io", _failing(exc=IOError), retry=tenacity.retry_if_exception_type(IOError))
    queue.enqueue("value")
    queue.enqueue("io")
    assert queue.drain() == 2
    by_type = {d["type"]: d for d in raw_docs()}
    assert by_type["value"]["status"] == "failed"
    assert by_type["value"]["attempts"] == 1
    assert by_type["value"]["errors"][0]["type"] == "builtins.ValueError"
    assert by_type["io"]["status"] == "pending"
    assert by_type["io"]["attempts"] == 1
    assert by_type["io"]["errors"][0]["type"] == "builtins.OSError"


def test_stop_after_attempt_stops_before_max_retries(queue: Any) -> None:
    queue.register_handler("t", _failing(), stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_fixed(0))
    queue.enqueue("t", max_retries=5)
    assert queue.drain() == 2
    doc = raw_doc()
    assert doc["status"] == "failed"
    assert doc["attempts"] == 2


def test_lenient_stop_never_exceeds_max_retries(queue: Any) -> None:
    queue.register_handler("t", _failing(), stop=tenacity.stop_after_attempt(10), wait=tenacity.wait_fixed(0))
    queue.enqueue("t", max_retries=2)
    assert queue.drain() == 3
    doc = raw_doc()
    assert doc["status"] == "failed"
    assert doc["attempts"] == 3


def test_stop_after_delay_counts_from_the_first_attempt(queue: Any, clock: Any) -> None:
    queue.register_handler("t", _failing(), stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(10))
    queue.enqueue("t", max_retries=100)
    queue.run_once()
    assert raw_doc()["status"] == "pending"
    clock.advance(seconds=61)
    queue.run_once()
    doc = raw_doc()
    assert doc["status"] == "failed"
    assert doc["attempts"] == 2


def test_stop_after_delay_counts_from_enqueue_for_a_delayed_job(queue: Any, clock: Any) -> None:
    # Documented in docs/retries.rst: the elapsed time runs from created_at, so
    # the schedule delay of a delayed job counts against stop_after_delay.
    queue.register_handler("t", _failing(), stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(10))
    queue.enqueue("t", delay_ms=30_000, max_retries=100)
    clock.advance(seconds=30)
    queue.run_once()
    assert raw_doc()["status"] == "pending"  # 30 s since enqueue
    clock.advance(seconds=30)
    queue.run_once()
    doc = raw_doc()
    assert doc["attempts"] == 2
    assert doc["status"] == "failed"  # 60 s since enqueue, 30 s since the first run


# -- RetryJob and FailJob -------------------------------------------------------


def test_retry_job_uses_its_delay_and_respects_max_retries(queue: Any, clock: Any) -> None:
    def handler(job: Any) -> None:
        raise RetryJob(delay_ms=1234, reason="rate limited")

    queue.register_handler("t", handler, retry=tenacity.retry_if_exception_type(IOError))
    queue.enqueue("t", max_retries=2)
    for attempt in (1, 2):
        queue.run_once()
        doc = raw_doc()
        assert doc["status"] == "pending"
        assert doc["run_at"] == clock.now + timedelta(milliseconds=1234)
        assert doc["last_error"]["type"] == "mongo_job_queue.errors.RetryJob"
        assert doc["last_error"]["message"] == "rate limited"
        assert doc["attempts"] == attempt
        clock.now = doc["run_at"]
    queue.run_once()
    doc = raw_doc()
    assert doc["status"] == "failed"
    assert doc["attempts"] == 3


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_retry_job_rejects_bad_delays(bad: Any) -> None:
    with pytest.raises(TypeError, match="delay_ms"):
        RetryJob(delay_ms=bad)


def test_fail_job_fails_at_once(queue: Any) -> None:
    def handler(job: Any) -> None:
        raise FailJob("bad input")

    queue.register_handler("t", handler)
    queue.enqueue("t", max_retries=5)
    assert queue.run_once().status == "failed"
    doc = raw_doc()
    assert doc["attempts"] == 1
    assert doc["last_error"]["type"] == "mongo_job_queue.errors.FailJob"
    assert doc["last_error"]["message"] == "bad input"


# -- unusual exceptions -----------------------------------------------------------


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_base_exceptions_are_failed_attempts(queue: Any, exc: type[BaseException]) -> None:
    queue.register_handler("t", _failing(exc=exc))
    queue.enqueue("t")
    done = queue.run_once()
    assert done.status == "pending"
    doc = raw_doc()
    assert doc["attempts"] == 1
    assert doc["last_error"]["type"] == f"builtins.{exc.__name__}"
    assert doc["last_error"]["message"] == "boom 1"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def test_unprintable_exception_is_recorded_and_worker_continues(queue: Any, clock: Any) -> None:
    def handler(job: Any) -> str:
        if job.data.get("bad"):
            raise Unprintable()
        return "fine"

    queue.register_handler("t", handler)
    queue.enqueue("t", {"bad": True})
    queue.enqueue("t", {"bad": False})
    assert queue.drain() == 2
    docs = raw_docs()
    assert docs[0]["status"] == "pending"
    assert docs[0]["last_error"]["message"] == "<unprintable Unprintable>"
    assert docs[0]["last_error"]["type"].endswith(".Unprintable")
    assert "Unprintable" in docs[0]["last_error"]["traceback"]
    assert docs[1]["status"] == "completed"
    assert docs[1]["result"] == "fine"


# -- bounded error records -----------------------------------------------------------


def test_error_history_keeps_the_newest_records(make_queue: Any) -> None:
    queue = make_queue(max_error_history=3, max_retries=5)
    queue.register_handler("t", _failing(), wait=tenacity.wait_fixed(0))
    queue.enqueue("t")
    assert queue.drain() == 6
    doc = raw_doc()
    assert doc["status"] == "failed"
    assert [e["attempt"] for e in doc["errors"]] == [4, 5, 6]
    assert [e["message"] for e in doc["errors"]] == ["boom 4", "boom 5", "boom 6"]
    assert doc["last_error"]["attempt"] == 6


def test_long_message_and_traceback_are_truncated(make_queue: Any) -> None:
    queue = make_queue(max_error_chars=100, max_traceback_chars=300)

    def handler(job: Any) -> None:
        raise ValueError("head" + "m" * 5_000 + "tail")

    queue.register_handler("t", handler)
    queue.enqueue("t")
    queue.run_once()
    error = raw_doc()["last_error"]
    assert len(error["message"]) <= 100
    assert error["message"].startswith("headmmm")  # the start of a message is kept
    assert "chars truncated" in error["message"]
    assert len(error["traceback"]) <= 300
    assert error["traceback"].rstrip().endswith("mmmtail")  # the end of a traceback is kept
    assert "chars truncated" in error["traceback"]


@pytest.mark.parametrize("limit", [1, 10])
def test_tiny_message_limit_is_respected(make_queue: Any, limit: int) -> None:
    queue = make_queue(max_error_chars=limit)

    def handler(job: Any) -> None:
        raise ValueError("x" * 100)

    queue.register_handler("t", handler)
    queue.enqueue("t")
    queue.run_once()
    message = raw_doc()["last_error"]["message"]
    assert len(message) <= limit, f"{message!r} stored for a limit of {limit}"


@pytest.mark.parametrize("limit", [1, 10])
def test_tiny_traceback_limit_is_respected(make_queue: Any, limit: int) -> None:
    queue = make_queue(max_traceback_chars=limit)
    queue.register_handler("t", _failing())
    queue.enqueue("t")
    queue.run_once()
    traceback_text = raw_doc()["last_error"]["traceback"]
    assert len(traceback_text) <= limit, f"{len(traceback_text)} chars stored for a limit of {limit}"


# -- RetryPolicy.decide directly ------------------------------------------------------------

CONFIG = QueueConfig()


def _decide(policy: RetryPolicy, exc: BaseException, attempts: int, max_retries: int = 3, **kw: Any) -> Any:
    kw.setdefault("enqueued_at", START)
    kw.setdefault("now", START)
    kw.setdefault("config", CONFIG)
    return policy.decide(exc, attempts=attempts, max_retries=max_retries, **kw)


@pytest.mark.parametrize("attempts", [1, 2, 3, 4, 5])
def test_decide_default_backoff_bounds(attempts: int) -> None:
    policy = RetryPolicy()
    low = 1_000 * 2 ** (attempts - 1)
    for _ in range(50):
        decision = _decide(policy, ValueError(), attempts, max_retries=10)
        assert decision.retry is True
        assert low <= decision.delay_ms <= low + 1_000


def test_decide_default_backoff_is_capped() -> None:
    config = QueueConfig(retry_delay_ms=1_000, retry_max_delay_ms=5_000)
    for attempts in (3, 4, 10, 30):
        decision = _decide(RetryPolicy(), ValueError(), attempts, max_retries=50, config=config)
        assert decision.retry is True
        assert decision.delay_ms <= 5_000
        if attempts >= 4:
            assert decision.delay_ms == 5_000


def test_decide_stops_after_max_retries() -> None:
    assert _decide(RetryPolicy(), ValueError(), 3, max_retries=3).retry is True
    decision = _decide(RetryPolicy(), ValueError(), 4, max_retries=3)
    assert decision.retry is False
    assert decision.reason == "max_retries=3 exhausted"
    assert _decide(RetryPolicy(), ValueError(), 1, max_retries=0).retry is False


def test_decide_fail_job_and_retry_job() -> None:
    policy = RetryPolicy(retry=tenacity.retry_if_exception_type(IOError), wait=tenacity.wait_fixed(99))
    fail = _decide(policy, FailJob("x"), 1)
    assert (fail.retry, fail.reason) == (False, "handler raised FailJob")
    retry = _decide(policy, RetryJob(1234), 1)
    assert (retry.retry, retry.delay_ms) == (True, 1234)
    assert _decide(policy, RetryJob(1234), 4, max_retries=3).retry is False
    stopped = _decide(RetryPolicy(stop=tenacity.stop_after_attempt(1)), RetryJob(5), 1)
    assert (stopped.retry, stopped.reason) == (False, "stop policy reached")


def test_decide_retry_predicate() -> None:
    policy = RetryPolicy(retry=tenacity.retry_if_exception_type(IOError), wait=tenacity.wait_fixed(2))
    declined = _decide(policy, ValueError(), 1)
    assert (declined.retry, declined.reason) == (False, "retry policy declined this exception")
    accepted = _decide(policy, OSError(), 1)
    assert (accepted.retry, accepted.delay_ms) == (True, 2_000)


@pytest.mark.parametrize("exc", [SystemExit(1), KeyboardInterrupt(), GeneratorExit()])
def test_decide_retries_base_exceptions_by_default(exc: BaseException) -> None:
    assert _decide(RetryPolicy(), exc, 1).retry is True


def test_decide_stop_after_delay_measured_from_enqueued_at() -> None:
    policy = RetryPolicy(stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(1))
    now = START + timedelta(hours=5)
    assert _decide(policy, ValueError(), 2, enqueued_at=now - timedelta(seconds=59), now=now).retry is True
    late = _decide(policy, ValueError(), 2, enqueued_at=now - timedelta(seconds=60), now=now)
    assert (late.retry, late.reason) == (False, "stop policy reached")
    assert _decide(policy, ValueError(), 2, enqueued_at=None, now=now).retry is True
    assert _decide(policy, ValueError(), 2, enqueued_at=now + timedelta(seconds=5), now=now).retry is True


def test_decide_negative_wait_becomes_zero() -> None:
    decision = _decide(RetryPolicy(wait=lambda state: -5.0), ValueError(), 1)
    assert (decision.retry, decision.delay_ms) == (True, 0)


def test_decide_wait_sees_the_attempt_number() -> None:
    policy = RetryPolicy(wait=lambda state: float(state.attempt_number))
    assert _decide(policy, ValueError(), 3).delay_ms == 3_000
    assert _decide(policy, ValueError(), 0).delay_ms == 1_000  # attempt numbers start at 1
