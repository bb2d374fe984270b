"""Time limits without a worker: where the limit comes from, the stored option, the exception, the abandon write.

The watchdog thread beside ``run_once()`` on a queue runs over the wire:
tests/integration/test_time_limits_run_once.py.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from conftest import raw_doc

from mongo_job_queue import HandlerError, InvalidJobError, JobTimeLimitExceeded, QueueConfig
from mongo_job_queue.context import RunState
from mongo_job_queue.handlers import Handler
from mongo_job_queue.middleware import MiddlewareChain
from mongo_job_queue.model import JobError
from mongo_job_queue.store import ClaimedJob
from mongo_job_queue.worker import timelimits
from mongo_job_queue.worker.timelimits import time_limit_of

TIME_LIMIT_ERROR = "mongo_job_queue.errors.JobTimeLimitExceeded"


def _loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.005)


def test_the_job_s_limit_wins_then_the_handler_s_then_the_config_s() -> None:
    config = QueueConfig(default_time_limit_ms=5_000)
    limited = Handler("T", print, time_limit_ms=300)
    unlimited = Handler("T", print)
    assert time_limit_of({"time_limit_ms": 100}, limited, config) == 100
    assert time_limit_of({"time_limit_ms": 0}, limited, config) == 0  # the job opts out
    assert time_limit_of({"time_limit_ms": 7.0}, limited, config) == 7  # mongosh's doubles
    assert time_limit_of({}, limited, config) == 300
    assert time_limit_of({}, Handler("T", print, time_limit_ms=0), config) == 0
    assert time_limit_of({}, unlimited, config) == 5_000
    assert time_limit_of({}, None, QueueConfig()) == 0  # no limit by default


@pytest.mark.parametrize("bad", [-1, True, "10", 1.5, 10**20])
def test_an_invalid_handler_time_limit_is_refused(queue: Any, bad: Any) -> None:
    with pytest.raises(HandlerError, match="time_limit_ms"):
        queue.register_handler("T", print, time_limit_ms=bad)
    assert "T" not in queue.registry


def test_the_handler_s_limit_is_kept_by_a_worker_subset(queue: Any) -> None:
    queue.register_handler("T", print, time_limit_ms=250)
    assert queue.registry.subset(["T"]).get("T").time_limit_ms == 250


def test_a_job_s_own_limit_is_stored_only_when_given(queue: Any) -> None:
    queue.enqueue("T", {}, time_limit_ms=1_500)
    assert raw_doc()["time_limit_ms"] == 1_500
    queue.store.collection.delete_many({})
    queue.enqueue("T", {})
    assert "time_limit_ms" not in raw_doc()
    queue.enqueue_many([{"job_type": "U", "time_limit_ms": 0}])
    assert queue.job_model.objects.get(type="U").time_limit_ms == 0


@pytest.mark.parametrize("bad", [-1, True, "10", 2.5, 10**20])
def test_an_invalid_job_time_limit_is_refused_before_any_write(queue: Any, bad: Any) -> None:
    with pytest.raises(InvalidJobError, match="time_limit_ms"):
        queue.enqueue("T", {}, time_limit_ms=bad)
    with pytest.raises(InvalidJobError, match=r"jobs\[0\]: time_limit_ms"):
        queue.enqueue_many([{"job_type": "T", "time_limit_ms": bad}])
    assert queue.store.collection.count_documents({}) == 0


@pytest.mark.parametrize("key", ["default_time_limit_ms", "time_limit_grace_ms"])
def test_the_time_limit_settings_are_bounded(key: str) -> None:
    with pytest.raises(Exception, match=key):
        QueueConfig(**{key: -1})
    assert QueueConfig(default_time_limit_ms=0).default_time_limit_ms == 0


def test_a_hand_edited_time_limit_is_quarantined_at_claim(queue: Any) -> None:
    queue.register_handler("T", lambda job: "ran")
    job = queue.enqueue("T", {})
    queue.store.collection.update_one({"_id": job.id}, {"$set": {"time_limit_ms": "soon"}})
    queue.run_once()
    done = queue.get_job(job.id)
    assert done.status == "failed" and "time_limit_ms" in done.last_error.message


# run_once() with the watchdog thread beside it: tests/integration/test_time_limits_run_once.py.


def test_the_exception_arriving_while_leaving_the_call_is_absorbed(monkeypatch: pytest.MonkeyPatch) -> None:
    # It was scheduled as the handler returned: leaving again, the handler's result stands.
    calls: list[int] = []
    real_leave = timelimits.Watch.leave

    def leave(self: timelimits.Watch) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise JobTimeLimitExceeded
        real_leave(self)

    monkeypatch.setattr(timelimits.Watch, "leave", leave)
    limits = timelimits.TimeLimits(QueueConfig(), MiddlewareChain(None))
    watch = limits.watch(_state(), 60_000, None)
    assert limits.call(lambda job: "result", None, watch) == "result"
    assert calls == [1, 1] and watch is not None and not watch.inside


def _state() -> RunState:
    return RunState(ClaimedJob({"_id": 1, "type": "T", "attempts": 1}, "token"))


# -- the abandon write ----------------------------------------------------------


def _claimed(queue: Any, clock: Any, **enqueue: Any) -> Any:
    if "T" not in queue.registry:
        queue.register_handler("T", print)
    queue.enqueue("T", {}, **enqueue)
    claimed = queue.worker.claim_one()
    assert claimed is not None
    return claimed


def _record(queue: Any, claimed: Any) -> JobError:
    exc = JobTimeLimitExceeded("the handler was abandoned")
    return JobError.from_exception(exc, attempt=1, at=queue.store.now(), token=claimed.token, config=queue.config)


def test_abandon_reschedules_and_removes_the_token_so_late_writes_lose(queue: Any, clock: Any) -> None:
    claimed = _claimed(queue, clock)
    run_at = clock.now + timedelta(seconds=5)
    assert queue.store.jobs.abandon(claimed, _record(queue, claimed), run_at) == "pending"
    doc = raw_doc()
    assert doc["status"] == "pending" and doc["run_at"] == run_at and "lease_token" not in doc
    assert doc["last_error"]["type"] == TIME_LIMIT_ERROR and doc["attempts"] == 1
    # The abandoned handler's own writes, later: none lands, none believes it did.
    assert queue.store.jobs.complete(claimed, "late") is False
    assert queue.store.jobs.reschedule(claimed, clock.now, _record(queue, claimed)) is False
    assert queue.store.jobs.release(claimed) is False
    assert raw_doc()["status"] == "pending" and "result" not in raw_doc()


def test_abandon_fails_the_last_attempt_and_cancels_a_cancel_requested_job(queue: Any, clock: Any) -> None:
    claimed = _claimed(queue, clock)
    assert queue.store.jobs.abandon(claimed, _record(queue, claimed), None) == "failed"
    assert raw_doc()["status"] == "failed" and raw_doc()["finished_at"] == clock.now
    queue.store.collection.delete_many({})
    claimed = _claimed(queue, clock)
    queue.cancel_job(claimed.id)
    assert queue.store.jobs.abandon(claimed, _record(queue, claimed), clock.now) == "cancelled"
    assert raw_doc()["status"] == "cancelled" and "lease_token" not in raw_doc()


def test_abandon_loses_to_a_newer_claim_and_recognises_its_own_earlier_try(queue: Any, clock: Any) -> None:
    claimed = _claimed(queue, clock)
    record = _record(queue, claimed)
    assert queue.store.jobs.abandon(claimed, record, clock.now) == "pending"
    # A retried try whose first reply was lost finds its own record and reports the write.
    assert queue.store.jobs.abandon(claimed, record, clock.now) == "pending"
    newer = queue.worker.claim_one()
    assert newer is not None and newer.token != claimed.token
    clock.advance(ms=1)  # another record than the one the earlier try pushed
    assert queue.store.jobs.abandon(claimed, _record(queue, claimed), clock.now) is None
    assert raw_doc()["status"] == "processing" and raw_doc()["lease_token"] == newer.token


def test_the_exception_never_lands_outside_the_handler_call_nor_abandons_a_returned_run() -> None:
    """Many 1 ms limits on handlers that return at once, with thread switches as frequent as Python allows.

    The exception could be raised before the call's ``try`` or in the loop of its
    ``finally``: it then escaped into the worker's own code, left the watch
    "inside", and the watchdog abandoned a run whose handler had returned (the
    review's script saw it in two runs of three).
    """
    import sys

    limits = timelimits.TimeLimits(QueueConfig(time_limit_grace_ms=1), MiddlewareChain(None))
    returned: list[Any] = []
    problems: list[str] = []

    def abandon(watch: Any) -> None:
        if watch in returned:
            problems.append("abandoned after its handler returned")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for n in range(3000):
            watch = limits.watch(RunState(ClaimedJob({"_id": n, "type": "t", "attempts": 1}, "tok")), 1, abandon)
            assert watch is not None
            try:
                try:
                    limits.call(lambda job: "r", None, watch)
                except JobTimeLimitExceeded:
                    pass  # raised in the call: the attempt's own failure, as it should be
                returned.append(watch)
                if watch.inside:
                    problems.append("left inside")
                deadline = time.monotonic() + 0.001
                while time.monotonic() < deadline:  # the worker's own code after a run
                    sum(range(50))
            except JobTimeLimitExceeded:
                problems.append("landed in the worker's code")
        time.sleep(0.05)  # the watchdog's last expiries
    finally:
        sys.setswitchinterval(interval)
    assert problems == []
