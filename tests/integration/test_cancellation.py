"""Cancellation over the wire: pending jobs at once, running jobs through the heartbeat, in bulk."""

from __future__ import annotations

import threading

import pytest
from helpers import wait_until

from mongo_job_queue import InvalidJobError, JobCancelled

pytestmark = pytest.mark.integration


def test_a_running_job_learns_of_its_cancellation_and_ends_cancelled(make_queue, job_model) -> None:
    worker = make_queue()
    started, saw_request = threading.Event(), threading.Event()

    @worker.handler("long")
    def long(job) -> None:
        started.set()
        wait_until(job.is_cancel_requested, timeout=30, what="the cancel request to reach the handler")
        saw_request.set()
        raise JobCancelled("stopping as asked")

    worker.start_polling()
    job = worker.enqueue("long", {})
    assert started.wait(30)
    admin = make_queue()  # another process's queue object
    assert admin.cancel_job(job.id) is True
    assert admin.get_job(job.id).status == "processing"  # requested, not yet cancelled
    wait_until(lambda: admin.get_job(job.id).status == "cancelled", timeout=30)
    final = admin.get_job(job.id)
    assert saw_request.is_set() and final.finished_at is not None and final.attempts == 1
    assert admin.cancel_job(job.id) is False  # finished


def test_a_handler_that_ignores_the_request_and_fails_is_cancelled_not_retried(make_queue, job_model) -> None:
    worker = make_queue(max_retries=5)
    go = threading.Event()

    @worker.handler("T")
    def handler(job) -> None:
        assert go.wait(30)
        raise RuntimeError("boom")

    worker.start_polling()
    job = worker.enqueue("T", {})
    wait_until(lambda: worker.get_job(job.id).status == "processing", timeout=30)
    assert worker.cancel_job(job.id)
    go.set()  # fails before any heartbeat told it: the reschedule's fence refuses, the job is cancelled
    wait_until(lambda: worker.get_job(job.id).status == "cancelled", timeout=30)
    assert worker.get_job(job.id).attempts == 1


def test_a_cancel_requested_job_whose_worker_died_is_cancelled_by_the_sweep(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    job = queue.enqueue("T", {})
    claimed = queue.worker.claim_one()  # claimed by a "worker" that then dies: no heartbeat
    assert claimed is not None and queue.cancel_job(job.id)
    job_model.objects(id=job.id).update(set__lease_expires_at=queue.store.now())
    assert queue.recover_orphans() == (0, 1)
    assert queue.get_job(job.id).status == "cancelled"


def test_bulk_cancel_by_type_and_queue(make_queue, job_model) -> None:
    queue = make_queue(queues=["default", "mail"])
    for _ in range(3):
        queue.enqueue("A", {})
        queue.enqueue("B", {})
        queue.enqueue("A", {}, queue="mail")
    assert queue.cancel_jobs(job_type="A", queue="default") == {"cancelled": 3, "requested": 0}
    assert queue.cancel_jobs(queue="mail") == {"cancelled": 3, "requested": 0}
    assert job_model.objects(status="pending").count() == 3
    assert job_model.objects(status="pending", type="B").count() == 3
    with pytest.raises(InvalidJobError, match="needs job_type or queue"):
        queue.cancel_jobs()
    with pytest.raises(InvalidJobError, match="job_type must be"):
        queue.cancel_jobs(job_type="")
    assert job_model.objects(status="pending").count() == 3


def test_bulk_cancel_of_running_jobs_reaches_every_worker(make_queue, job_model) -> None:
    workers = [make_queue(concurrency=2) for _ in range(2)]
    release = threading.Event()
    for worker in workers:

        @worker.handler("long")
        def long(job) -> None:
            while not release.is_set():
                job.report_progress(10, "working")  # raises JobCancelled once requested
                release.wait(0.05)

        worker.start_polling()
    jobs = [workers[0].enqueue("long", {}) for _ in range(4)]
    wait_until(lambda: job_model.objects(status="processing").count() == 4, timeout=30)
    waiting = workers[0].enqueue("long", {}, delay_ms=60_000)
    assert workers[0].cancel_jobs(job_type="long", running=True) == {"cancelled": 1, "requested": 4}
    wait_until(lambda: job_model.objects(status="cancelled").count() == 5, timeout=30)
    release.set()
    assert {workers[0].get_job(j.id).status for j in [*jobs, waiting]} == {"cancelled"}
