"""The threaded worker over the wire: running, ordering, delays, retries, stop."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from helpers import holds_for, wait_until

from mongo_job_queue import FailJob, JobStatus, QueueStateError, RetryJob

pytestmark = pytest.mark.integration


def _all_final(job_model: Any, n: int) -> bool:
    return job_model.objects(status__in=["completed", "failed"]).count() == n


def test_enqueue_from_one_queue_run_by_another_with_app_fields(make_queue, job_model) -> None:
    web = make_queue()  # a web process: enqueues, never handles
    worker = make_queue(concurrency=4)
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    @worker.handler("SEND_EMAIL")
    def send(job) -> dict[str, Any]:
        with lock:
            seen.append((job.data["to"], job.organization))
        return {"sent": True}

    jobs = [web.enqueue("SEND_EMAIL", {"to": f"u{i}@example.com"}, organization=f"org{i % 3}") for i in range(30)]
    worker.start_polling()
    wait_until(lambda: _all_final(job_model, 30), what="30 jobs done")
    assert sorted(seen) == sorted((f"u{i}@example.com", f"org{i % 3}") for i in range(30))
    for job in jobs:
        done = job_model.objects.get(id=job.id)
        assert done.status == "completed"
        assert done.attempts == 1
        assert done.result == {"sent": True}
        assert done.finished_at >= done.started_at >= done.created_at
        assert done.lease_owner.pid > 0
        assert done.lease_owner.host


def test_worker_claims_only_its_types_and_queues(make_queue, job_model) -> None:
    worker = make_queue(queues=["default", "mail"])
    worker.register_handler("A", lambda job: None)
    other_type = worker.enqueue("B", {})
    other_queue = worker.enqueue("A", {}, queue="reports")
    mine = worker.enqueue("A", {}, queue="mail")
    worker.start_polling()
    wait_until(lambda: job_model.objects.get(id=mine.id).status == "completed")
    assert worker.stop(timeout=10)
    assert job_model.objects.get(id=other_type.id).status == "pending"
    assert job_model.objects.get(id=other_queue.id).status == "pending"


def test_priority_then_run_at_order_with_one_thread(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1)
    order: list[str] = []
    queue.register_handler("T", lambda job: order.append(job.data["name"]))
    base = queue.clock() - timedelta(seconds=10)
    queue.enqueue("T", {"name": "low-old"}, priority=0, run_at=base)
    queue.enqueue("T", {"name": "low-new"}, priority=0, run_at=base + timedelta(seconds=1))
    queue.enqueue("T", {"name": "high-new"}, priority=5, run_at=base + timedelta(seconds=2))
    queue.enqueue("T", {"name": "high-old"}, priority=5, run_at=base + timedelta(seconds=1))
    queue.enqueue("T", {"name": "mid"}, priority=1, run_at=base + timedelta(seconds=3))
    queue.start_polling()
    wait_until(lambda: len(order) == 5)
    assert order == ["high-old", "high-new", "mid", "low-old", "low-new"]


def test_delayed_job_never_starts_before_run_at(make_queue, job_model) -> None:
    queue = make_queue()
    started: dict[str, Any] = {}
    queue.register_handler("LATER", lambda job: started.setdefault(job.data["k"], queue.clock()))
    delayed = queue.enqueue("LATER", {"k": "delayed"}, delay_ms=800)
    queue.enqueue("LATER", {"k": "now"})
    queue.start_polling()
    wait_until(lambda: "now" in started)
    assert "delayed" not in started
    wait_until(lambda: "delayed" in started, timeout=20)
    assert started["delayed"] >= queue.get_job(delayed.id).run_at  # naive UTC, like the clock


def test_retries_back_off_then_exhaust(make_queue, job_model) -> None:
    queue = make_queue(retry_delay_ms=100, max_retries=2)
    calls: list[float] = []

    @queue.handler("FLAKY")
    def flaky(job) -> None:
        calls.append(time.monotonic())
        raise ConnectionError(f"down on attempt {job.attempts}")

    job = queue.enqueue("FLAKY", {})
    queue.start_polling()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "failed", timeout=30)
    done = job_model.objects.get(id=job.id)
    assert done.attempts == 3 == len(calls)
    assert [e.attempt for e in done.errors] == [1, 2, 3]
    assert done.last_error.message == "down on attempt 3"
    assert done.errors[0].type == "builtins.ConnectionError"
    # exponential from 100 ms: >= 100 ms, then >= 200 ms (ms truncation allows 2 ms)
    assert calls[1] - calls[0] >= 0.098
    assert calls[2] - calls[1] >= 0.198


def test_retry_job_and_fail_job_control_flow(make_queue, job_model) -> None:
    queue = make_queue()

    @queue.handler("ASK_LATER")
    def ask_later(job) -> str:
        if job.attempts == 1:
            raise RetryJob(delay_ms=300, reason="rate limited")
        return "second time lucky"

    @queue.handler("GIVE_UP")
    def give_up(job) -> None:
        raise FailJob("bad input, retrying will not help")

    later = queue.enqueue("ASK_LATER", {})
    never = queue.enqueue("GIVE_UP", {})
    queue.start_polling()
    wait_until(lambda: job_model.objects.get(id=later.id).status == "completed")
    wait_until(lambda: job_model.objects.get(id=never.id).status == "failed")
    done = job_model.objects.get(id=later.id)
    assert done.attempts == 2
    assert done.result == "second time lucky"
    assert (done.started_at - done.errors[0].at) >= timedelta(milliseconds=290)
    failed = job_model.objects.get(id=never.id)
    assert failed.attempts == 1
    assert failed.last_error.type.endswith("FailJob")


def test_handler_base_exceptions_are_failed_attempts_and_pool_keeps_size(make_queue, job_model) -> None:
    queue = make_queue(concurrency=2, max_retries=0)

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    raisers = {
        "exit": SystemExit(3),
        "interrupt": KeyboardInterrupt(),
        "genexit": GeneratorExit(),
        "unprintable": Unprintable(),
    }

    @queue.handler("BOOM")
    def boom(job) -> None:
        raise raisers[job.data["kind"]]

    queue.register_handler("OK", lambda job: None)
    bad = {kind: queue.enqueue("BOOM", {"kind": kind}) for kind in raisers}
    queue.start_polling()
    wait_until(lambda: job_model.objects(type="BOOM", status="failed").count() == 4)
    for kind, job in bad.items():
        failed = job_model.objects.get(id=job.id)
        assert failed.attempts == 1, kind
        assert failed.last_error.type.rsplit(".", 1)[-1] == type(raisers[kind]).__name__
    assert "unprintable" in job_model.objects.get(id=bad["unprintable"].id).last_error.message
    for _ in range(20):
        queue.enqueue("OK", {})
    wait_until(lambda: job_model.objects(type="OK", status="completed").count() == 20)
    handlers = [t for t in threading.enumerate() if t.name.startswith(f"mjq-{queue.worker.owner.worker_id}-handler")]
    assert len(handlers) == 2
    assert all(t.is_alive() for t in handlers)


def test_start_polling_is_idempotent_and_needs_handlers(make_queue) -> None:
    queue = make_queue(concurrency=3)
    with pytest.raises(QueueStateError):
        queue.start_polling()
    queue.register_handler("X", lambda job: None)
    queue.start_polling()
    queue.start_polling()
    prefix = f"mjq-{queue.worker.owner.worker_id}-"
    # handlers, poller, heartbeat, maintenance, change-stream waker, completion flusher
    assert len([t for t in threading.enumerate() if t.name.startswith(prefix)]) == 3 + 5
    assert queue.stop(timeout=10)
    assert not queue.running


def test_graceful_stop_waits_for_running_jobs_and_claims_nothing_more(make_queue, job_model) -> None:
    queue = make_queue(concurrency=2)
    release = threading.Event()
    running = threading.Semaphore(0)

    @queue.handler("SLOW")
    def slow(job) -> None:
        running.release()
        assert release.wait(20)

    first = [queue.enqueue("SLOW", {"n": i}) for i in range(2)]
    queue.start_polling()
    assert running.acquire(timeout=10)
    assert running.acquire(timeout=10)
    later = [queue.enqueue("SLOW", {"n": 10 + i}) for i in range(3)]
    result: dict[str, bool] = {}
    stopper = threading.Thread(target=lambda: result.setdefault("finished", queue.stop(timeout=20)))
    stopper.start()
    wait_until(lambda: queue.worker._stopping.is_set())
    release.set()
    stopper.join(30)
    assert result == {"finished": True}
    assert all(job_model.objects.get(id=j.id).status == "completed" for j in first)
    assert all(job_model.objects.get(id=j.id).status == "pending" for j in later)
    assert all(job_model.objects.get(id=j.id).attempts == 0 for j in later)


def test_stop_timeout_keeps_the_lease_of_a_still_running_job(make_queue, job_model) -> None:
    queue = make_queue(concurrency=1, lease_ms=1_000, heartbeat_interval_ms=200)
    release = threading.Event()
    started = threading.Event()

    @queue.handler("STUCK")
    def stuck(job) -> str:
        started.set()
        assert release.wait(30)
        return "done late"

    job = queue.enqueue("STUCK", {})
    queue.start_polling()
    assert started.wait(10)
    assert queue.stop(timeout=0.2) is False
    # Well past the lease: the heartbeat still holds it, so a sweeper takes nothing.
    sweeper = make_queue()
    holds_for(
        lambda: sweeper.recover_orphans() == (0, 0) and job_model.objects.get(id=job.id).status == "processing",
        duration=1.5,
        what="the running job keeps its lease",
    )
    release.set()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert job_model.objects.get(id=job.id).result == "done late"


def test_local_enqueue_wakes_an_idle_worker(make_queue, job_model) -> None:
    queue = make_queue(poll_interval_base_ms=5_000, poll_interval_max_ms=5_000)
    queue.register_handler("PING", lambda job: None)
    queue.start_polling()
    first = queue.enqueue("PING", {})
    # After this job the poller finds nothing and goes idle for 5 s.
    wait_until(lambda: job_model.objects.get(id=first.id).status == "completed", timeout=10)
    started = time.monotonic()
    job = queue.enqueue("PING", {})
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed", timeout=4)
    assert time.monotonic() - started < 4


def test_job_status_enum_matches_stored_values(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("E", lambda job: None)
    job = queue.enqueue("E")
    assert job.status == JobStatus.PENDING
    assert queue.run_once().status == JobStatus.COMPLETED


def test_idle_polling_backs_off_and_snaps_back_when_work_appears(make_queue, job_model) -> None:
    # Polling without a change stream: with one, an idle worker does not poll (test_idle_cost.py).
    queue = make_queue(poll_interval_base_ms=20, poll_interval_max_ms=320, change_stream_wakeups=False)
    queue.register_handler("IDLE", lambda job: None)
    claims: list[tuple[float, bool]] = []
    real_claim = queue.worker.poller.claim_some

    def counting_claim(*args, **kwargs):
        result = real_claim(*args, **kwargs)
        claims.append((time.monotonic(), bool(result)))
        return result

    queue.worker.poller.claim_some = counting_claim  # type: ignore[method-assign]
    queue.start_polling()
    # Intervals 20, 40, 80, 160, 320, 320 ms...: about 11 claims in 2 s, not 100.
    wait_until(lambda: claims and claims[-1][0] - claims[0][0] >= 2.0, timeout=10)
    idle = len(claims)
    assert 6 <= idle <= 16, idle
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(claims)]
    assert max(gaps) < 0.32 * 1.5 + 0.1  # never beyond the configured maximum (plus claim time)
    assert gaps[-1] >= 0.25  # and it did reach it
    # A job enqueued elsewhere (no local wake-up) is found within one max interval...
    other = make_queue()
    job = other.enqueue("IDLE", {})
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed", timeout=5)
    # ...after which the poller is back at the base interval.
    found = next(i for i, (_, got) in enumerate(claims) if got)
    wait_until(lambda: len(claims) > found + 2)
    assert not claims[found + 1][1]
    assert claims[found + 2][0] - claims[found + 1][0] < 0.1  # base interval, not 320 ms
