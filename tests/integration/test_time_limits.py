"""Time limits over the wire: the exception in the handler, the retry, and abandoning a handler that won't return."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import wait_until

from mongo_job_queue import JobTimeLimitExceeded, Middleware
from mongo_job_queue.store import ClaimedJob

pytestmark = pytest.mark.integration

TIME_LIMIT_ERROR = "mongo_job_queue.errors.JobTimeLimitExceeded"


class Recorder(Middleware):
    """Records the time-limit events, the claims (with their lease tokens) and how each run ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exceeded: list[tuple[Any, int]] = []
        self.abandoned: list[tuple[Any, int]] = []
        self.claims: list[dict[str, Any]] = []
        self.outcomes: list[tuple[Any, str]] = []
        self.lost_tokens: list[str] = []

    def on_time_limit_exceeded(self, queue: Any, doc: dict[str, Any], *, limit_ms: int) -> None:
        with self.lock:
            self.exceeded.append((doc["_id"], limit_ms))

    def on_abandoned(self, queue: Any, doc: dict[str, Any], *, limit_ms: int) -> None:
        with self.lock:
            self.abandoned.append((doc["_id"], limit_ms))

    def after_claim(self, queue: Any, doc: dict[str, Any]) -> None:
        with self.lock:
            self.claims.append(dict(doc))

    def on_lease_lost(self, queue: Any, doc: dict[str, Any]) -> None:
        with self.lock:
            self.lost_tokens.append(doc["lease_token"])

    def after_process(self, queue: Any, job: Any, *, outcome: str, exc: Any, duration_s: float) -> None:
        with self.lock:
            self.outcomes.append((job.id, outcome))


class Stuck:
    """A handler body blocked in C (a lock wait) until released: the exception cannot get in before.

    Like ``time.sleep(60)``, but the test releases it at its end and joins
    the threads it held, so no abandoned handler wakes up in a later test.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self, job: Any = None) -> None:
        self.threads.append(threading.current_thread())
        self.release.wait(60)

    def end(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(20)
        assert not any(t.is_alive() for t in self.threads)  # abandoned threads exit, they do not rejoin the pool


def _busy_python(seconds: float) -> None:
    """Python bytecode all along (a loop of short sleeps): the exception gets in at once."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


def test_a_handler_past_its_limit_fails_with_the_exception_and_the_retry_completes(make_queue, job_model) -> None:
    recorder = Recorder()
    queue = make_queue(time_limit_grace_ms=10_000)
    queue.add_middleware(recorder)
    attempts: list[str] = []

    @queue.handler("slow_once", time_limit_ms=300, max_retries=2)
    def slow_once(job) -> str:
        attempts.append("run")
        if len(attempts) == 1:
            _busy_python(30)  # far past the limit: only the exception ends it
            return "never"
        return "done"

    job = queue.enqueue("slow_once", {})
    started = time.monotonic()
    queue.start_polling()
    wait_until(lambda: queue.get_job(job.id).status == "completed", timeout=20, what="the retry to complete")
    assert time.monotonic() - started < 10  # interrupted at its limit, not after 30 s
    done = queue.get_job(job.id)
    assert done.attempts == 2 and done.result == "done"
    [error] = done.errors
    assert error.type == TIME_LIMIT_ERROR and error.attempt == 1
    assert "time limit of 300 ms" in error.message
    assert "_busy_python" in error.traceback  # raised where the handler was
    assert recorder.exceeded == [(job.id, 300)] and recorder.abandoned == []
    assert sorted(outcome for _, outcome in recorder.outcomes) == ["completed", "retry"]


def test_the_job_s_own_limit_overrides_the_handler_s(make_queue, job_model) -> None:
    queue = make_queue(default_time_limit_ms=60_000, time_limit_grace_ms=10_000)
    queue.register_handler("work", lambda job: _busy_python(job.data["seconds"]), max_retries=0)
    queue.register_handler("limited", lambda job: _busy_python(job.data["seconds"]), max_retries=0, time_limit_ms=200)
    tight = queue.enqueue("work", {"seconds": 30}, time_limit_ms=200)  # the config's 60 s would let it run
    free = queue.enqueue("limited", {"seconds": 0.6}, time_limit_ms=0)  # 0: no limit for this job
    held = queue.enqueue("limited", {"seconds": 30})  # the handler's 200 ms
    queue.start_polling()
    for job in (tight, free, held):
        wait_until(lambda job=job: queue.get_job(job.id).status in ("completed", "failed"), timeout=20)
    assert queue.get_job(tight.id).status == "failed"
    assert "time limit of 200 ms" in queue.get_job(tight.id).last_error.message
    assert queue.get_job(free.id).status == "completed"
    assert queue.get_job(held.id).last_error.type == TIME_LIMIT_ERROR
    assert job_model.objects.get(id=tight.id).time_limit_ms == 200
    assert job_model.objects.get(id=held.id).time_limit_ms is None  # the handler's is not copied into the job


def test_a_handler_stuck_in_c_is_abandoned_the_pool_keeps_its_size_and_stop_does_not_wait(make_queue) -> None:
    recorder = Recorder()
    queue = make_queue(concurrency=2, max_retries=1, time_limit_grace_ms=300)
    queue.add_middleware(recorder)
    stuck = Stuck()
    queue.register_handler("stuck", stuck, time_limit_ms=200)
    barrier = threading.Barrier(2, timeout=20)

    @queue.handler("pair")
    def pair(job) -> None:
        barrier.wait()  # completes only if both pair jobs run at the same time

    job = queue.enqueue("stuck", {})
    queue.start_polling()
    wait_until(lambda: queue.get_job(job.id).status == "failed", timeout=20, what="both attempts abandoned")
    done = queue.get_job(job.id)
    assert done.attempts == 2  # bounded by max_retries=1: each abandonment counted an attempt
    assert [e.type for e in done.errors] == [TIME_LIMIT_ERROR, TIME_LIMIT_ERROR]
    assert "abandoned" in done.last_error.message and done.lease_token is None
    assert recorder.abandoned == [(job.id, 200), (job.id, 200)]
    assert len(stuck.threads) == 2 and all(t.is_alive() for t in stuck.threads)  # still blocked in C

    # Both abandoned threads were replaced: two jobs that must run together still do.
    pairs = [queue.enqueue("pair", {}) for _ in range(2)]
    wait_until(lambda: all(queue.get_job(p.id).status == "completed" for p in pairs), timeout=20)
    assert not set(stuck.threads) & set(queue.worker.threads.handlers)

    started = time.monotonic()
    assert queue.stop(timeout=5) is True  # the abandoned threads are not waited for
    assert time.monotonic() - started < 5
    assert all(t.is_alive() for t in stuck.threads)
    stuck.end()
    assert queue.get_job(job.id).status == "failed"  # their late ends changed nothing


def test_an_abandoned_handler_s_late_result_is_fenced_out(make_queue, job_model) -> None:
    recorder = Recorder()
    queue = make_queue(concurrency=1, max_retries=1, time_limit_grace_ms=300)
    queue.add_middleware(recorder)
    release, late_returned = threading.Event(), threading.Event()
    runs: list[int] = []
    threads: list[threading.Thread] = []

    @queue.handler("T", time_limit_ms=200)
    def handler(job) -> str:
        runs.append(job.attempts)
        threads.append(threading.current_thread())
        if job.attempts > 1:
            return "retried"
        try:
            release.wait(60)  # blocked in a C lock: the exception gets in only once released
        except JobTimeLimitExceeded:
            pass  # caught: the handler goes on and returns its result
        late_returned.set()
        return "late"

    job = queue.enqueue("T", {})
    queue.start_polling()
    wait_until(lambda: queue.get_job(job.id).status == "completed", timeout=20, what="the retry to complete")
    assert queue.get_job(job.id).result == "retried" and runs == [1, 2]  # ran while the first still "ran"
    first = next(c for c in recorder.claims if c["attempts"] == 1)
    release.set()
    assert late_returned.wait(20)
    # Its completion was written and lost to the fence.
    wait_until(lambda: first["lease_token"] in recorder.lost_tokens, timeout=20, what="the late write to be refused")
    final = queue.get_job(job.id)
    assert final.status == "completed" and final.result == "retried" and final.attempts == 2
    # The abandonment removed the first run's token: none of its writes can land, whatever the job's state.
    assert queue.store.jobs.complete(ClaimedJob(first, first["lease_token"]), "late") is False
    assert first["lease_token"] not in {final.lease_token, None}
    threads[0].join(20)
    assert not threads[0].is_alive()  # the abandoned thread exited after its run


def test_an_abandoned_run_s_late_completion_is_not_buffered_with_the_live_runs_acks(make_queue, job_model) -> None:
    """Under ``batch_acks`` the abandoned run's late completion is written at once, not queued with the group commit.

    Buffered, its pending ack gave the heartbeat the dead run's token, newest
    by claim order, in place of the live retry's until the write landed (found
    by the review of the time limits).
    """
    queue = make_queue(concurrency=1, max_retries=1, time_limit_grace_ms=300, batch_acks=True)
    release, late_returned = threading.Event(), threading.Event()
    retry_running, finish_retry = threading.Event(), threading.Event()

    @queue.handler("T", time_limit_ms=200)
    def handler(job) -> str:
        if job.attempts > 1:
            retry_running.set()
            finish_retry.wait(20)
            return "retried"
        try:
            release.wait(60)  # blocked in a C lock: the exception gets in only once released
        except JobTimeLimitExceeded:
            pass
        late_returned.set()
        return "late"

    job = queue.enqueue("T", {})
    queue.start_polling()
    assert retry_running.wait(20)  # the first run was abandoned; its retry runs on the replacement thread
    buffered: list[int] = []
    group = queue.worker._completer
    assert group is not None
    real_complete = group.complete

    def complete(claimed, result):  # type: ignore[no-untyped-def]
        buffered.append(claimed.doc["attempts"])
        return real_complete(claimed, result)

    group.complete = complete  # type: ignore[method-assign]
    release.set()
    assert late_returned.wait(20)
    finish_retry.set()
    wait_until(lambda: queue.get_job(job.id).status == "completed", timeout=20, what="the retry to complete")
    final = queue.get_job(job.id)
    assert final.result == "retried" and final.attempts == 2
    assert 1 not in buffered, buffered  # the abandoned attempt's completion never joined the group commit


def test_abandoning_a_job_whose_cancel_was_requested_cancels_it(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1, max_retries=3, time_limit_grace_ms=300)
    stuck = Stuck()  # ignores both the cancel request and, being in C, the exception
    queue.register_handler("T", stuck, time_limit_ms=1_000)
    job = queue.enqueue("T", {})
    queue.start_polling()
    wait_until(lambda: stuck.threads, timeout=20)
    assert queue.cancel_job(job.id)
    try:
        wait_until(lambda: queue.get_job(job.id).status == "cancelled", timeout=20)
    finally:
        stuck.end()
    done = queue.get_job(job.id)
    assert done.attempts == 1 and done.last_error.type == TIME_LIMIT_ERROR  # not retried


def test_prometheus_counts_exceeded_and_abandoned_handlers(make_queue, job_model) -> None:
    prometheus = pytest.importorskip("mongo_job_queue.contrib.prometheus")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    queue = make_queue(concurrency=1, max_retries=0, time_limit_grace_ms=300)
    queue.add_middleware(prometheus.PrometheusMiddleware(registry))
    stuck = Stuck()
    queue.register_handler("loop", lambda job: _busy_python(30), time_limit_ms=200)
    queue.register_handler("stuck", stuck, time_limit_ms=200)
    jobs = [queue.enqueue("loop", {}), queue.enqueue("stuck", {})]
    queue.start_polling()
    try:
        for job in jobs:
            wait_until(lambda job=job: queue.get_job(job.id).status == "failed", timeout=20)
    finally:
        stuck.end()

    def value(name: str, job_type: str) -> float:
        found = registry.get_sample_value(name, {"queue": "default", "job_type": job_type})
        return 0.0 if found is None else found

    assert value("mongo_job_queue_time_limits_exceeded_total", "loop") == 1
    assert value("mongo_job_queue_time_limits_exceeded_total", "stuck") == 1
    assert value("mongo_job_queue_handlers_abandoned_total", "loop") == 0
    assert value("mongo_job_queue_handlers_abandoned_total", "stuck") == 1
