"""A run abandoned to its time limit keeps its limiter slots until its handler returns (issue 15).

A thread cannot be killed: an abandoned handler may go on for as long as it
likes. Its attempt is recorded at once (retry or failed), but its mutex key
(or its place under a cap) stays taken, extended by the heartbeat with no
lease left to renew, so no other run of the key starts beside it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import holds_for, wait_until

from mongo_job_queue import JobTimeLimitExceeded

pytestmark = pytest.mark.integration

#: Leases and beats short enough that a holder nobody extended would lapse within the test's hold.
SHORT = {"lease_ms": 1_000, "heartbeat_interval_ms": 200, "time_limit_grace_ms": 200, "max_retries": 0}


class Runs:
    """Runs in flight per key, the most seen at once, and when each run started and ended."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[Any, int] = {}
        self.peak = 0
        self.started: dict[Any, float] = {}
        self.ended: dict[Any, float] = {}

    def enter(self, key: Any, run: Any) -> None:
        with self.lock:
            self.running[key] = self.running.get(key, 0) + 1
            self.peak = max(self.peak, self.running[key])
            self.started[run] = time.monotonic()

    def leave(self, key: Any, run: Any) -> None:
        with self.lock:
            self.running[key] -= 1
            self.ended[run] = time.monotonic()


def ignore_time_limit(gate: threading.Event) -> None:
    """Wait for ``gate`` in Python bytecode, swallowing every JobTimeLimitExceeded: abandoned, it runs on."""
    while not gate.is_set():
        try:
            gate.wait(0.02)
        except JobTimeLimitExceeded:
            pass


def holders(raw_db: Any) -> list[dict[str, Any]]:
    return [h for doc in raw_db.jobs_limiters.find() for h in doc.get("holders") or []]


def test_an_abandoned_run_keeps_its_mutex_key_until_its_handler_returns(make_queue, raw_db) -> None:
    queue = make_queue(concurrency=2, **SHORT)
    gate, runs, threads = threading.Event(), Runs(), []

    @queue.handler("M", time_limit_ms=200)
    def run(job: Any) -> None:
        runs.enter(job.mutex_key, job.data["n"])
        try:
            if job.data["n"] == 0:
                threads.append(threading.current_thread())
                ignore_time_limit(gate)
        finally:
            runs.leave(job.mutex_key, job.data["n"])

    first = queue.enqueue("M", {"n": 0}, mutex_key="invoice:42")
    queue.start_polling()
    try:
        wait_until(lambda: queue.get_job(first.id).status == "failed", timeout=20, what="the first run abandoned")
        assert "abandoned" in queue.get_job(first.id).last_error.message
        second = queue.enqueue("M", {"n": 1}, mutex_key="invoice:42")
        # Longer than two leases, with no live run here: only the heartbeat keeps the abandoned run's holder.
        holds_for(lambda: 1 not in runs.started, 2.5, what="the second run waits for the abandoned handler")
        assert queue.get_job(second.id).status == "pending" and len(holders(raw_db)) == 1
        gate.set()
        wait_until(lambda: queue.get_job(second.id).status == "completed", timeout=5, what="the second run, promptly")
    finally:
        gate.set()
    assert runs.peak == 1
    assert runs.started[1] >= runs.ended[0]  # it started only once the abandoned handler had returned
    assert queue.get_job(first.id).status == "failed"  # the late return was fenced out
    wait_until(lambda: not holders(raw_db), timeout=5, what="every holder released")
    threads[0].join(10)


def test_an_abandoned_run_s_retry_waits_for_it_too(make_queue) -> None:
    queue = make_queue(concurrency=2, **{**SHORT, "max_retries": 1})
    gate, runs = threading.Event(), Runs()

    @queue.handler("M", time_limit_ms=200)
    def run(job: Any) -> None:
        runs.enter(job.mutex_key, job.attempts)
        try:
            if job.attempts == 1:
                ignore_time_limit(gate)
        finally:
            runs.leave(job.mutex_key, job.attempts)

    job = queue.enqueue("M", {}, mutex_key="invoice:7")
    queue.start_polling()
    try:
        wait_until(lambda: queue.get_job(job.id).attempts == 1 and queue.get_job(job.id).errors, timeout=20)
        holds_for(lambda: 2 not in runs.started, 2.0, what="the retry waits for the abandoned attempt's handler")
        gate.set()
        wait_until(lambda: queue.get_job(job.id).status == "completed", timeout=5, what="the retry, promptly")
    finally:
        gate.set()
    assert runs.peak == 1 and runs.started[2] >= runs.ended[1]


def test_stop_does_not_wait_for_an_abandoned_run_and_its_slots_are_kept_while_the_process_lives(
    make_queue, raw_db
) -> None:
    queue = make_queue(concurrency=1, **SHORT)
    gate = threading.Event()
    queue.register_handler("M", lambda job: ignore_time_limit(gate), time_limit_ms=200)
    job = queue.enqueue("M", {}, mutex_key="report")
    queue.start_polling()
    try:
        wait_until(lambda: queue.get_job(job.id).status == "failed", timeout=20, what="the run abandoned")
        started = time.monotonic()
        assert queue.stop(timeout=5) is True  # neither the abandoned handler nor the beat for its slots is waited for
        assert time.monotonic() - started < 3
        before = holders(raw_db)[0]["until"]
        wait_until(lambda: holders(raw_db)[0]["until"] > before, timeout=5, what="the holder extended after stop")
        assert queue.worker.keeper.thread is not None and queue.worker.keeper.thread.is_alive()
    finally:
        gate.set()
    wait_until(lambda: not holders(raw_db), timeout=5, what="released once the handler returned")
    keeper = queue.worker.keeper.thread
    if keeper is not None:
        keeper.join(5)
        assert not keeper.is_alive()  # nothing left to beat for: the heartbeat ends


def test_an_abandoned_chunk_keeps_its_jobs_slots_until_it_returns(make_queue, raw_db) -> None:
    queue = make_queue(concurrency=1, **{**SHORT, "max_retries": 1})
    gate, calls = threading.Event(), []

    def chunk(jobs: list[Any]) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            ignore_time_limit(gate)

    queue.register_batch_handler("C", chunk, max_size=2, max_wait_ms=50, time_limit_ms=200)
    queue.enqueue_many({"job_type": "C", "mutex_key": f"k{n}"} for n in range(2))
    queue.start_polling()
    try:
        wait_until(lambda: calls, timeout=20, what="the first chunk runs")
        # Abandoned, its leases lapse and are rescued (attempts counted); their retries wait for the slots.
        wait_until(lambda: queue.counts().get("pending") == 2, timeout=20, what="both jobs requeued by lease expiry")
        holds_for(lambda: len(calls) == 1, 2.0, what="no retry of the chunk while the abandoned one runs")
        assert len(holders(raw_db)) == 2
        gate.set()
        wait_until(lambda: queue.counts().get("completed") == 2, timeout=10, what="the retried chunk ran")
    finally:
        gate.set()


def test_a_run_requeued_at_exit_keeps_its_slots_until_it_is_due_again(make_queue, raw_db) -> None:
    queue = make_queue(concurrency=1)
    gate, running = threading.Event(), threading.Event()

    def run(job: Any) -> None:
        running.set()
        assert gate.wait(30)

    queue.register_handler("M", run)
    job = queue.enqueue("M", {}, mutex_key="nightly")
    queue.start_polling()
    try:
        assert running.wait(20)
        assert queue.stop(timeout=0.2, requeue_running=True) is False
        queue.worker.requeue_abandoned()  # what the exit hook does
        requeued = raw_db.jobs.find_one({"_id": job.id})
        assert requeued["status"] == "pending"
        (holder,) = holders(raw_db)  # kept, not released at once: the exiting process may still run the handler
        # It lapses when the job is due; or up to a lease later, when a heartbeat's renewal, read before the
        # requeue, lands after it (seen in a parallel run: 1 s later). Never before: that is what matters.
        lapses_after = (holder["until"] - requeued["run_at"]).total_seconds()
        assert -0.5 < lapses_after <= queue.config.lease_ms / 1000, lapses_after
    finally:
        gate.set()
    wait_until(lambda: not holders(raw_db), timeout=5, what="released once the handler returned")


def test_the_slots_of_an_abandoned_run_whose_process_died_lapse_after_a_lease(make_queue, monkeypatch) -> None:
    queue = make_queue(concurrency=2, **SHORT)
    gate, runs = threading.Event(), Runs()

    @queue.handler("M", time_limit_ms=200)
    def run(job: Any) -> None:
        runs.enter(job.mutex_key, job.data["n"])
        try:
            if job.data["n"] == 0:
                ignore_time_limit(gate)
        finally:
            runs.leave(job.mutex_key, job.data["n"])

    first = queue.enqueue("M", {"n": 0}, mutex_key="invoice:9")
    queue.start_polling()
    try:
        wait_until(lambda: queue.get_job(first.id).status == "failed", timeout=20, what="the first run abandoned")
        # As if its process had died: nothing extends its holder any more.
        monkeypatch.setattr(queue.store.limits, "extend", lambda leases, until: None)
        second = queue.enqueue("M", {"n": 1}, mutex_key="invoice:9")
        # The job no longer runs under the lapsed holder's token: the next admission drops it.
        wait_until(lambda: queue.get_job(second.id).status == "completed", timeout=10, what="the holder lapsed")
        assert not gate.is_set()
    finally:
        gate.set()
