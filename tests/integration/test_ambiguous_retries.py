"""Writes whose reply is lost after they applied: the retry must report what the first try did.

A ``writeConcernError`` from ``failCommand`` is the server's way of saying
"applied, but not confirmed": the write is in, the reply is an error, and the
store retries. Each call must recognise its own earlier write, not count it
as someone else's, nor undo it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from mongoengine import StringField

from mongo_job_queue import BaseJob, Middleware, create_job_queue

from .models import ALIAS

pytestmark = pytest.mark.integration

WCE = {"writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}}


class RefJob(BaseJob):
    """A model with a unique index of the app's own, beside the queue's."""

    ref = StringField()
    meta = {
        "collection": "ref_jobs",
        "db_alias": ALIAS,
        "indexes": [{"fields": ["ref"], "unique": True, "sparse": True, "name": "ref_1"}],
    }


class Hooks(Middleware):
    def __init__(self) -> None:
        self.cancelled: list[Any] = []
        self.recovered: list[Any] = []

    def on_cancelled(self, queue: Any, job_id: Any) -> None:
        self.cancelled.append(job_id)

    def on_orphan_recovered(self, queue: Any, doc: dict[str, Any], *, failed: bool) -> None:
        self.recovered.append(doc["_id"])


def test_enqueue_many_keeps_its_jobs_when_the_reply_carries_only_a_write_concern_error(
    make_queue, job_model, failpoint
) -> None:
    queue = make_queue()
    queue.enqueue("warm-up", {})  # the collection and its indexes exist; the failpoint hits the batch
    failpoint(["insert"], 1, **WCE)
    jobs = queue.enqueue_many([{"job_type": "T", "data": {"n": n}} for n in range(5)])
    assert [job.data["n"] for job in jobs] == list(range(5))
    stored = sorted(job.data["n"] for job in job_model.objects(type="T"))
    assert stored == list(range(5)), "inserted jobs were deleted again (or inserted twice)"


def test_cancel_job_whose_first_try_cancelled_reports_it_and_fires_the_hook(make_queue, job_model, failpoint) -> None:
    hooks = Hooks()
    queue = make_queue()
    queue.add_middleware(hooks)
    job = queue.enqueue("T", {}, delay_ms=60_000)
    failpoint(["update", "findAndModify"], 1, **WCE)
    assert queue.cancel_job(job.id) is True
    assert job_model.objects.get(id=job.id).status == "cancelled"
    assert hooks.cancelled == [job.id]


def test_retry_job_whose_first_try_applied_reports_success(make_queue, job_model, failpoint) -> None:
    queue = make_queue()
    job = queue.enqueue("T", {}, delay_ms=60_000)
    assert queue.cancel_job(job.id)
    failpoint(["update", "findAndModify"], 1, **WCE)
    assert queue.retry_job(job.id) is True
    assert job_model.objects.get(id=job.id).status == "pending"


def test_recover_whose_first_try_applied_counts_the_job_and_fires_the_hook(make_queue, job_model, failpoint) -> None:
    hooks = Hooks()
    queue = make_queue()
    queue.add_middleware(hooks)
    queue.register_handler("T", lambda job: None)
    job = queue.enqueue("T", {})
    assert queue.worker.claim_one() is not None
    job_model.objects(id=job.id).update(set__lease_expires_at=queue.store.now() - timedelta(seconds=5))
    failpoint(["update"], 1, **WCE)
    assert queue.recover_orphans() == (1, 0)
    assert hooks.recovered == [job.id]
    assert job_model.objects.get(id=job.id).status == "pending"


def _between_tries(queue: Any, action: Any) -> list[int]:
    """Run ``action`` once, in the backoff between the first try of the next retried call and its retry."""
    done: list[int] = []

    def sleep(_seconds: float) -> None:
        if not done:
            done.append(1)
            action()

    queue.store._sleep = sleep
    return done


def test_retry_job_whose_job_ran_and_failed_again_before_the_retry_does_not_queue_it_twice(
    make_queue, job_model, failpoint
) -> None:
    queue = make_queue()
    runs: list[int] = []

    @queue.handler("T", max_retries=0)
    def handler(job: Any) -> None:
        runs.append(1)
        raise RuntimeError("boom")

    job = queue.enqueue("T", {})
    assert queue.run_once().status == "failed"
    done = _between_tries(queue, lambda: queue.run_once())  # a worker takes the re-queued job and fails it
    failpoint(["update"], 1, **WCE)
    assert queue.retry_job(job.id) is True
    assert done, "the failpoint did not make the call retry"
    assert len(runs) == 2, "one retry_job queued the job more than once"
    assert job_model.objects.get(id=job.id).status == "failed"


def test_retry_job_whose_job_was_rescheduled_before_the_retry_reports_success(make_queue, job_model, failpoint) -> None:
    queue = make_queue(retry_delay_ms=60_000)

    @queue.handler("T", max_retries=3)
    def handler(job: Any) -> None:
        raise RuntimeError("boom")

    job = queue.enqueue("T", {}, delay_ms=60_000)
    assert queue.cancel_job(job.id)
    done = _between_tries(queue, lambda: queue.run_once())  # it runs, fails and is rescheduled (new run_at)
    failpoint(["update"], 1, **WCE)
    assert queue.retry_job(job.id) is True
    assert done, "the failpoint did not make the call retry"
    stored = job_model.objects.get(id=job.id)
    assert stored.status == "pending" and stored.attempts == 1


def test_cancel_job_whose_flagged_job_ended_cancelled_before_the_retry_reports_it(
    make_queue, job_model, failpoint
) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    job = queue.enqueue("T", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None
    done = _between_tries(queue, lambda: queue.store.jobs.cancel_claimed(claimed))  # its worker honours the flag
    failpoint(["findAndModify"], 1, **WCE)
    assert queue.cancel_job(job.id) is True
    assert done, "the failpoint did not make the call retry"
    assert job_model.objects.get(id=job.id).status == "cancelled"


def test_cancel_job_of_a_cancelled_job_is_false_even_at_the_same_instant(make_queue, job_model) -> None:
    frozen = datetime(2030, 1, 1, 12, 0, 0)
    queue = make_queue(clock=lambda: frozen)
    job = queue.enqueue("T", {}, delay_ms=60_000)
    assert queue.cancel_job(job.id) is True
    assert queue.cancel_job(job.id) is False, "a second cancel took the first one's write for its own"


def test_cancel_jobs_whose_first_try_flagged_running_jobs_counts_them(make_queue, job_model, failpoint) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    for _ in range(3):
        queue.enqueue("T", {})
    running = [queue.worker.claim_one() for _ in range(3)]
    assert all(running)
    for _ in range(2):
        queue.enqueue("T", {}, delay_ms=60_000)

    def workers_finish_two() -> None:  # before the retry: one handler completes, one honours the flag
        assert queue.store.jobs.complete(running[0])
        assert queue.store.jobs.cancel_claimed(running[1])

    done = _between_tries(queue, workers_finish_two)
    failpoint(["update"], 1, **WCE)
    assert queue.cancel_jobs(job_type="T", running=True) == {"cancelled": 2, "requested": 3}
    assert done, "the failpoint did not make the call retry"
    assert job_model.objects(type="T", cancel_requested=True).count() == 3


def test_enqueue_whose_first_try_applied_returns_the_job_whichever_index_the_retry_collides_on(
    job_model, failpoint
) -> None:
    """The retried insert of an applied job collides on the app's index too; the job is ours, not a conflict.

    The store recognised its own earlier try only when the server named the
    ``_id`` index, so a server naming ``ref_1`` made enqueue raise
    "violates a unique index" for a job it had stored.
    """
    RefJob.drop_collection()
    queue = create_job_queue(job_model=RefJob, config={"db_retry_max_delay_ms": 50})
    try:
        queue.enqueue("warm-up", {}, ref="taken")
        failpoint(["insert"], 1, **WCE)
        job = queue.enqueue("T", {}, ref="fresh")
        assert [j.id for j in RefJob.objects(type="T")] == [job.id]
        with pytest.raises(Exception, match="unique index"):
            queue.enqueue("T", {}, ref="fresh")  # a real conflict is still refused
        assert RefJob.objects(type="T").count() == 1
    finally:
        queue.stop(timeout=10)
        RefJob.drop_collection()
