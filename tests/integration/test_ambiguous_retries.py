"""Writes whose reply is lost after they applied: the retry must report what the first try did.

A ``writeConcernError`` from ``failCommand`` is the server's way of saying
"applied, but not confirmed": the write is in, the reply is an error, and the
store retries. Each call must recognise its own earlier write, not count it
as someone else's, nor undo it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from mongo_job_queue import Middleware

pytestmark = pytest.mark.integration

WCE = {"writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}}


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
