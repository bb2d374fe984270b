"""A rate's reserved starts under contention: every start the rate spends goes to a job while jobs wait.

Two claimers that read the same head of the queue both reserve starts for
it. The one whose jobs were reserved first used to leave its starts unused,
already spent from the rate: three processes at 20/s spent the rate's every
start and ran 5-8 jobs a second (docs/limits.rst).
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from mongo_job_queue.clock import utcnow
from mongo_job_queue.model import LeaseOwner
from mongo_job_queue.store.limiter import RATE_SLOTS, limiter_id


def _ns(when: datetime) -> int:
    return (when.replace(tzinfo=None) - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1_000


def test_starts_reserved_for_jobs_another_claimer_took_go_to_other_waiting_jobs(make_queue, raw_db) -> None:
    frozen = utcnow()  # one instant for both claimers: the rate's state is exact
    a = make_queue(clock=lambda: frozen, sync_clock=False)
    b = make_queue(clock=lambda: frozen, sync_clock=False)
    a.limit("api", job_types=["R"], rate="20/s")
    a.enqueue_many([{"job_type": "R"} for _ in range(12)])
    owner = LeaseOwner.current()
    real = b.store.limits.admit
    a_claimed: list[Any] = []

    def admit_after_a(*args: Any, **kwargs: Any) -> Any:
        # b has read the six most urgent jobs; before it admits the first, a claims from the same head:
        # a takes the rate's start for one of them and reserves the next five starts for the others.
        if not a_claimed:
            a_claimed.extend(a.store.jobs.claim_batch(["R"], ["default"], owner, 2))
        return real(*args, **kwargs)

    b.store.limits.admit = admit_after_a  # type: ignore[method-assign]
    assert b.store.jobs.claim_batch(["R"], ["default"], owner, 2) == []  # refused: it reserves starts instead
    assert len(a_claimed) == 1
    lid = limiter_id("api", "")
    held = sorted(d["run_at"] for d in raw_db.jobs.find({RATE_SLOTS: lid, "status": "pending"}))
    # The rate spent one start for a's run, five for a's reservation and six for b's (its six candidates);
    # b's jobs were all taken or reserved by a, so its six starts must go to the six other waiting jobs.
    spent = (raw_db.jobs_limiters.find_one({"_id": lid})["tat_ns"] - _ns(frozen)) // 50_000_000
    assert (spent, len(held)) == (12, 11), held
    assert [(y - x).total_seconds() for x, y in itertools.pairwise(held)] == [0.05] * 10  # one start per interval
