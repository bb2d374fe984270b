"""Cancellation is one decision: a job that moves between pending and processing meanwhile is still cancelled.

The interleaving is forced: right after the cancel's first write reaches the
server, the running attempt fails and the worker reschedules it to pending
(through the store's own fenced reschedule), as a retrying job does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo.collection import Collection

from mongo_job_queue import JobError

pytestmark = pytest.mark.integration


@pytest.fixture
def after_first_write(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """``arm(action)``: run ``action`` once, right after the next write command on the jobs collection."""
    armed: list[Callable[[], None]] = []

    def wrap(name: str) -> None:
        original = getattr(Collection, name)

        def write(self: Collection[Any], *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            if armed and self.name == "jobs":
                armed.pop()()
            return result

        monkeypatch.setattr(Collection, name, write)

    for name in ("update_one", "update_many", "find_one_and_update"):
        wrap(name)
    return armed.append


def _running_job(queue: Any) -> Any:
    queue.register_handler("T", lambda job: None)
    job = queue.enqueue("T", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None and claimed.id == job.id
    return claimed


def _attempt_fails(queue: Any, claimed: Any) -> Callable[[], None]:
    def reschedule() -> None:
        now = queue.store.now()
        error = JobError(type="ValueError", message="boom", traceback="", attempt=1, at=now, lease_token=claimed.token)
        queue.store.jobs.reschedule(claimed, now + timedelta(seconds=60), error)

    return reschedule


def test_cancel_job_of_a_job_rescheduled_meanwhile_takes_effect(make_queue, job_model, after_first_write) -> None:
    queue = make_queue()
    claimed = _running_job(queue)
    after_first_write(_attempt_fails(queue, claimed))
    assert queue.cancel_job(claimed.id) is True
    doc = job_model.objects.get(id=claimed.id)
    # The cancel came first, so the reschedule (fenced on "no cancel requested") did not apply.
    assert (doc.status, doc.cancel_requested) == ("processing", True)


def test_cancel_jobs_of_a_job_rescheduled_meanwhile_takes_effect(make_queue, job_model, after_first_write) -> None:
    queue = make_queue()
    claimed = _running_job(queue)
    after_first_write(_attempt_fails(queue, claimed))
    assert queue.cancel_jobs(job_type="T", running=True) == {"cancelled": 0, "requested": 1}
    assert job_model.objects.get(id=claimed.id).cancel_requested is True


def test_cancel_jobs_counts_both_kinds(make_queue, job_model) -> None:
    queue = make_queue()
    claimed = _running_job(queue)
    waiting = [queue.enqueue("T", {}, delay_ms=60_000) for _ in range(3)]
    assert queue.cancel_jobs(job_type="T") == {"cancelled": 3, "requested": 0}
    assert queue.cancel_jobs(job_type="T", running=True) == {"cancelled": 0, "requested": 1}
    assert queue.cancel_jobs(job_type="T", running=True) == {"cancelled": 0, "requested": 0}
    assert {job_model.objects.get(id=j.id).status for j in waiting} == {"cancelled"}
    assert job_model.objects.get(id=claimed.id).cancel_requested is True


def test_server_applies_a_pipeline_update_choosing_by_status(raw_db) -> None:
    """Conformance: the aggregation-pipeline update that cancellation relies on."""
    from mongo_job_queue.store.control import _cancel_pipeline

    coll = raw_db.cancel_conformance
    coll.drop()
    coll.insert_many(
        [
            {"_id": 1, "status": "pending"},
            {"_id": 2, "status": "processing", "admin_marks": [f"m{n}" for n in range(8)]},
            {"_id": 3, "status": "x"},
        ]
    )
    now = raw_db.command("hello")["localTime"].replace(tzinfo=None, microsecond=0)
    update = _cancel_pipeline(now, "M")
    assert coll.update_many({"status": {"$in": ["pending", "processing"]}}, update).modified_count == 2
    docs = {d["_id"]: d for d in coll.find()}
    assert docs[1] == {
        "_id": 1,
        "status": "cancelled",
        "finished_at": now,
        "updated_at": now,
        "admin_marks": ["M:cancelled"],
    }
    # The marks are appended and only the latest eight kept.
    marks = [*(f"m{n}" for n in range(1, 8)), "M:requested"]
    assert docs[2] == {
        "_id": 2,
        "status": "processing",
        "cancel_requested": True,
        "updated_at": now,
        "admin_marks": marks,
    }
    assert docs[3] == {"_id": 3, "status": "x"}
