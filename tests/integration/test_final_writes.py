"""The notice of final writes over the wire: worker runs, bulk cancel, lease recovery and lost leases."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from helpers import wait_until

from mongo_job_queue import LeaseOwner
from mongo_job_queue.clock import utcnow
from mongo_job_queue.store.finals import FinalJob

pytestmark = pytest.mark.integration


class Told:
    """A listener recording every notice, safe to call from the worker's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[Any, str, Any]] = []

    def __call__(self, jobs: Sequence[FinalJob]) -> None:
        with self.lock:
            self.seen.extend((job.id, job.status, job.doc.get("organization")) for job in jobs)

    def by_id(self) -> dict[Any, list[tuple[str, Any]]]:
        with self.lock:
            found: dict[Any, list[tuple[str, Any]]] = {}
            for job_id, status, org in self.seen:
                found.setdefault(job_id, []).append((status, org))
            return found


def listening(queue: Any) -> Told:
    told = Told()
    queue.store.finals.add(told, fields=("organization",))
    return told


def test_each_job_run_by_the_worker_is_told_once_with_its_fields(make_queue) -> None:
    queue = make_queue(concurrency=4)
    told = listening(queue)
    queue.register_handler("ok", lambda job: None)
    queue.register_handler("bad", lambda job: 1 / 0)
    ok = [queue.enqueue("ok", {}, organization=f"org{i}") for i in range(12)]
    bad = [queue.enqueue("bad", {}, max_retries=1, organization="bad") for _ in range(3)]
    queue.start_polling()
    wait_until(lambda: len(told.by_id()) == 15, timeout=30, what="every job told")
    queue.stop(timeout=10)
    found = told.by_id()
    assert all(found[job.id] == [("completed", f"org{i}")] for i, job in enumerate(ok))
    assert all(found[job.id] == [("failed", "bad")] for job in bad)  # the first, retried attempt is not final


def test_bulk_cancel_tells_each_cancelled_job_not_the_flagged_ones(make_queue, job_model) -> None:
    queue = make_queue()
    told = listening(queue)
    waiting = [queue.enqueue("T", {}, delay_ms=60_000, organization="a") for _ in range(3)]
    running = queue.enqueue("T", {}, organization="b")
    claimed = queue.store.jobs.claim(["T"], ["default"], LeaseOwner.current("w"))
    assert claimed is not None and claimed.id == running.id
    assert queue.cancel_jobs(job_type="T", running=True) == {"cancelled": 3, "requested": 1}
    assert told.by_id() == {job.id: [("cancelled", "a")] for job in waiting}
    assert queue.store.jobs.cancel_claimed(claimed) is True  # its worker honours the request: told now
    assert told.by_id()[running.id] == [("cancelled", "b")]


def test_a_lease_recovered_for_good_is_told_and_the_late_owner_is_not(make_queue, job_model) -> None:
    offset = timedelta(0)

    def clock():
        return utcnow() + offset

    owner = make_queue(lease_ms=1_000)
    job = owner.enqueue("PAY", {}, max_retries=0, organization="z")
    claimed = owner.store.jobs.claim(["PAY"], ["default"], LeaseOwner.current("frozen"))
    assert claimed is not None
    offset = timedelta(seconds=5)
    rescuer = make_queue(lease_ms=1_000, clock=clock, sync_clock=False)
    told = listening(rescuer)
    late = listening(owner)
    assert rescuer.recover_orphans() == (0, 1)  # no attempt left: failed for good
    assert told.by_id() == {job.id: [("failed", "z")]}
    assert owner.store.jobs.complete(claimed, "late") is False  # fenced out, and so not told
    assert late.by_id() == {}
    assert job_model.objects.get(id=job.id).status == "failed"
