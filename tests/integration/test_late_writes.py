"""Writes the server applies after their client stopped waiting must never shorten a live lease or cost an attempt.

The server holds one command (failCommand ``blockConnection`` with no error:
it runs when the block ends) past the client's bound. The store retries; the
held try then applies late, after a newer one.

* A heartbeat's renewal applied late used to ``$set`` the lease back to its
  own, older expiry, even one already past: the sweep then took a job whose
  worker was alive and renewing, and ran it beside the first run (or failed a
  ``max_retries=0`` job whose handler went on to succeed).
* A limiter holder's extension, the same way, freed a slot a lease early;
  a lock's renewal let another holder take a lock still renewed.
* A claim's write applied after its own lease had run out was swept by the
  lease sweep, attempt counted, before the stray-claim hand-back saw it: a
  ``max_retries=0`` job ended ``failed`` without having run.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from helpers import holds_for, wait_until
from pymongo.errors import PyMongoError

from mongo_job_queue.status import COMPLETED

pytestmark = pytest.mark.integration

#: The client's bound on one try (1.5 s) is shorter than the server's hold (3 s): try 1 applies after try 2.
BOUND = {"db_timeout_ms": 1_500}
HELD = {"blockConnection": True, "blockTimeMS": 3_000}


def _expiry(queue: Any, job_id: Any) -> Any:
    return queue.store.admin.get(job_id)["lease_expires_at"]


def test_a_renewal_applied_after_a_newer_one_never_moves_the_lease_back(make_queue, failpoint) -> None:
    queue = make_queue(lease_ms=8_000, **BOUND)
    queue.register_handler("JOB", lambda job: None)
    job = queue.enqueue("JOB", {})
    claimed = queue.worker.claim_one()  # no worker threads: the only update sent is the renewal below
    assert claimed is not None and claimed.id == job.id
    claimed_until = _expiry(queue, job.id)
    failpoint(["update"], 1, **HELD)
    assert not queue.store.jobs.renew_leases({job.id: claimed.token})  # try 1 held; try 2 renewed
    renewed = _expiry(queue, job.id)
    assert renewed > claimed_until
    # Try 1 lands when the hold ends, with the expiry it computed before try 2's.
    holds_for(lambda: _expiry(queue, job.id) >= renewed, 3.0, what="the lease never moves back")


def test_a_limiter_extension_applied_after_a_newer_one_never_moves_the_holder_back(make_queue, failpoint) -> None:
    queue = make_queue(lease_ms=8_000, **BOUND)
    queue.limit("cap", job_types=["JOB"], max_running=1)
    queue.register_handler("JOB", lambda job: None)
    queue.enqueue("JOB", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None
    limits = queue.store.limits

    def until() -> Any:
        [holder] = [h for doc in limits.limiters.find() for h in doc.get("holders", [])]
        return holder["until"]

    now = queue.store.now()
    failpoint(["update"], 1, **HELD)
    limits.extend({claimed.id: claimed.token}, now + timedelta(minutes=1))  # try 1 held, then retried
    limits.extend({claimed.id: claimed.token}, now + timedelta(minutes=5))
    extended = until()
    holds_for(lambda: until() >= extended, 3.0, what="the holder never moves back")


def test_a_lock_renewal_applied_after_a_newer_one_never_moves_the_expiry_back(make_queue, failpoint) -> None:
    queue = make_queue(**BOUND)
    locks = queue.locks
    token = locks.acquire("report", "holder-1", 8_000)  # builds the locks' index: no update to hold after it
    assert token is not None

    def expiry() -> Any:
        return locks.collection.find_one({"_id": "report"})["expires_at"]

    failpoint(["update"], 1, **HELD)
    assert locks.renew("report", "holder-1", token, 8_000)  # try 1 held; try 2 renewed
    renewed = expiry()
    holds_for(lambda: expiry() >= renewed, 3.0, what="the lock's expiry never moves back")


def test_a_claim_write_applied_after_its_lease_ran_out_is_handed_back_not_swept(make_queue, failpoint) -> None:
    # One try only (the claim raises at its 1.5 s bound); its write applies at 3 s, with the lease it
    # computed when sent, 2 s long: already expired. The sweep (every 100 ms) sees it before the stray
    # hand-back's next step (every heartbeat, 1 s), and must hand it back, not recover it.
    queue = make_queue(
        lease_ms=2_000,
        heartbeat_interval_ms=1_000,
        sweep_interval_ms=100,
        change_stream_wakeups=False,
        db_retry_attempts=1,
        **BOUND,
    )
    runs: Counter[Any] = Counter()
    queue.register_handler("JOB", lambda job: runs.update([job.id]))
    job = queue.enqueue("JOB", {}, max_retries=0)
    queue.store.now()  # the first clock sync is not part of the claim
    failpoint(["findAndModify"], 1, **HELD)
    with pytest.raises(PyMongoError):
        queue.worker.claim_one()
    # Paused, the worker claims nothing (else it would take the job before the late write lands, which
    # would then match nothing); its maintenance steps run meanwhile.
    queue.pause(job_types=["JOB"])
    queue.start_polling()

    def dealt_with() -> bool:  # leased by the late write, then handed back (token kept) or swept (failed)
        doc = queue.store.admin.get(job.id)
        return doc["status"] == "failed" or (doc["status"] == "pending" and bool(doc.get("lease_token")))

    wait_until(dealt_with, timeout=20, what="the late write applied and its lease was dealt with")
    stored = queue.store.admin.get(job.id)
    assert (stored["status"], stored["attempts"], stored.get("errors")) == ("pending", 0, None)  # not failed
    queue.resume(job_types=["JOB"])
    wait_until(lambda: queue.store.admin.get(job.id)["status"] == COMPLETED, timeout=20, what="the job completed")
    assert runs == {job.id: 1}
    assert queue.store.admin.get(job.id)["attempts"] == 1


def test_a_handed_back_job_leased_again_by_its_calls_late_try_is_a_stray(make_queue, failpoint) -> None:
    # Try 1 is held; try 2 claims the job and the call returns it; the worker hands it back unrun (a stop,
    # a slow claim), which sets the attempt count back to the one the call returned. Then try 1 applies
    # and leases the job again under the same token: at that count it looked like the returned run's own
    # lease, and the sweep failed a max_retries=0 job that never ran (review).
    queue = make_queue(lease_ms=8_000, change_stream_wakeups=False, concurrency=1, **BOUND)
    runs: Counter[Any] = Counter()
    queue.register_handler("JOB", lambda job: runs.update([job.id]))
    job = queue.enqueue("JOB", {}, max_retries=0)
    queue.store.now()
    failpoint(["findAndModify"], 1, **HELD)
    claimed = queue.worker.claim_one()  # try 1 held, try 2 claimed the job
    assert claimed is not None and claimed.id == job.id
    queue.worker.services.executor.hand_back(claimed)
    assert queue.store.admin.get(job.id)["status"] == "pending"
    wait_until(lambda: queue.store.admin.get(job.id)["status"] == "processing", timeout=10, what="try 1 applied")
    assert queue.store.jobs.strays.holds(queue.store.admin.get(job.id))  # no run holds it: a stray
    queue.start_polling()
    wait_until(lambda: queue.store.admin.get(job.id)["status"] == COMPLETED, timeout=30, what="the job completed")
    assert runs == {job.id: 1}
    assert queue.store.admin.get(job.id)["attempts"] == 1
