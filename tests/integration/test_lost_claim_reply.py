"""A claim whose write the server applies after the client stopped waiting: the job it leased still runs, once.

The server holds the claim's ``findAndModify`` (failCommand
``blockConnection`` with no error: the command runs when the block ends)
longer than ``db_timeout_ms``. The client's try times out; the write applies
later, leasing a job under a token no run holds. Before the stray-claim
hand-back, that job stayed ``processing`` until its lease expired and the
sweep took it back with the attempt counted: a ``max_retries=0`` job ended
``failed`` (LeaseExpired) without its handler ever running.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from helpers import wait_until
from pymongo.errors import PyMongoError

from mongo_job_queue.status import COMPLETED, PENDING, PROCESSING

pytestmark = pytest.mark.integration

#: Longer than the claim's bound (1.5 s: half the test config's 3 s lease), shorter than the lease.
LATE = {"blockConnection": True, "blockTimeMS": 2_500}


def _leased_by_the_late_write(queue: Any, job_id: Any) -> None:
    """Wait until the held claim's write has applied: the job got a lease token (a hand-back keeps it)."""
    wait_until(lambda: queue.store.admin.get(job_id).get("lease_token"), timeout=10, what="the late write applied")


def _recording(queue: Any, gate: Any = None) -> tuple[Counter[Any], list[Any]]:
    runs: Counter[Any] = Counter()
    overlaps: list[Any] = []
    running: set[Any] = set()
    lock = threading.Lock()

    def handler(job: Any) -> None:
        with lock:
            if job.id in running:
                overlaps.append(job.id)
            running.add(job.id)
            runs[job.id] += 1
        if gate is not None:
            gate(job)
        time.sleep(0.05)  # a short piece of work, so an overlapping second run would be seen
        with lock:
            running.discard(job.id)

    queue.register_handler("JOB", handler)
    return runs, overlaps


def test_a_retried_claim_whose_first_write_applies_late_runs_both_jobs_once(make_queue, failpoint) -> None:
    # Try 1 (held by the server) leases nothing yet; try 2 reads back by the token, finds nothing and
    # claims job A; then try 1's write applies and leases B under the same token, unknown to the worker.
    # A's handler holds the only slot until then, so the worker cannot claim B first.
    queue = make_queue(concurrency=1, change_stream_wakeups=False)
    a = queue.enqueue("JOB", {"n": 1}, max_retries=0, priority=1)
    b = queue.enqueue("JOB", {"n": 2}, max_retries=0)
    runs, overlaps = _recording(queue, gate=lambda job: job.id == a.id and _leased_by_the_late_write(queue, b.id))
    queue.store.now()  # the first clock sync is not part of the claim
    failpoint(["findAndModify"], 1, **LATE)
    queue.start_polling()
    wait_until(
        lambda: all(queue.store.admin.get(j.id)["status"] == COMPLETED for j in (a, b)),
        timeout=20,
        what="both jobs completed",
    )
    assert runs == {a.id: 1, b.id: 1}
    assert not overlaps
    assert queue.store.admin.get(b.id)["attempts"] == 1  # the stray lease's attempt was not counted


def test_a_claim_that_gave_up_before_its_write_applied_still_runs_the_job(make_queue, failpoint) -> None:
    # One try only: the claim raises; its write applies afterwards, leasing the job to no run.
    queue = make_queue(concurrency=1, change_stream_wakeups=False, db_retry_attempts=1)
    runs, overlaps = _recording(queue)
    job = queue.enqueue("JOB", {}, max_retries=0)
    queue.store.now()
    failpoint(["findAndModify"], 1, **LATE)
    with pytest.raises(PyMongoError):
        queue.worker.claim_one()
    _leased_by_the_late_write(queue, job.id)
    queue.start_polling()
    wait_until(lambda: queue.store.admin.get(job.id)["status"] == COMPLETED, timeout=20, what="the job completed")
    assert runs == {job.id: 1}
    assert not overlaps
    assert queue.store.admin.get(job.id)["attempts"] == 1


def test_only_the_jobs_no_call_returned_are_handed_back(make_queue) -> None:
    # The held job (returned by its claim call) must never be found, however long it runs: handing it
    # back would let a second worker run it beside the first.
    queue = make_queue()
    queue.register_handler("JOB", lambda job: None)
    held, stray = queue.enqueue("JOB", {}), queue.enqueue("JOB", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None
    strays = queue.store.jobs.strays
    assert not strays.found()
    other = held.id if claimed.id == stray.id else stray.id
    strays.watch(claimed.token, [claimed.id])
    assert strays.found() == []  # the held one is excluded
    # A late write of the same call leases the other job under the same token.
    queue.store.collection.update_one(
        {"_id": other}, {"$set": {"status": PROCESSING, "lease_token": claimed.token}, "$inc": {"attempts": 1}}
    )
    found = strays.found()
    assert [c.id for c in found] == [other] and found[0].token == claimed.token
    assert queue.worker.keeper.return_strays() == 1
    doc = queue.store.admin.get(other)
    assert doc["status"] == PENDING and doc["attempts"] == 0
    assert queue.store.admin.get(claimed.id)["status"] == PROCESSING  # the held run is untouched
    assert strays.found() == []


def test_a_batched_claim_that_gave_up_before_its_update_applied_still_runs_its_jobs(make_queue, failpoint) -> None:
    # The batch's update_many is held past the bound; the read-back by token finds nothing and the call
    # raises; then the update applies and leases every job it read, to no run.
    queue = make_queue(concurrency=4, change_stream_wakeups=False, db_retry_attempts=1)
    runs, overlaps = _recording(queue)
    jobs = [queue.enqueue("JOB", {"n": n}, max_retries=0) for n in range(3)]
    queue.store.now()
    failpoint(["update"], 1, **LATE)
    with pytest.raises(PyMongoError):
        queue.worker.claim_some(4)
    for job in jobs:
        _leased_by_the_late_write(queue, job.id)
    queue.start_polling()
    wait_until(
        lambda: all(queue.store.admin.get(j.id)["status"] == COMPLETED for j in jobs),
        timeout=20,
        what="every job of the batch completed",
    )
    assert runs == {j.id: 1 for j in jobs}
    assert not overlaps
