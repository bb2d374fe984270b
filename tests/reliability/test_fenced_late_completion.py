"""A frozen worker's late completion is fenced.

Worker A claims a job and is frozen with SIGSTOP for longer than its lease
(as in a long GC pause, a VM migration or a stopped container). Worker B
rescues the job and completes it. When A is thawed its handler finishes and
tries to record its outcome: the write is rejected by the lease token, the
job keeps B's result, and A logs that its lease was lost. Both executions
happened (at-least-once), only one outcome is recorded.
"""

from __future__ import annotations

import pytest
from helpers import wait_until

from .harness import LEASE_EXPIRED, check_invariants, executions_of, running_executions

pytestmark = pytest.mark.integration

TIMINGS = {"lease_ms": 1_000, "heartbeat_ms": 200, "sweep_ms": 200, "poll_max_ms": 200}


def test_frozen_workers_late_completion_changes_nothing(fleet, raw_db, make_queue) -> None:
    a = fleet.spawn("A", concurrency=1, **TIMINGS)
    job = make_queue().enqueue("WORK", {"sleep_ms": 1_000})
    wait_until(lambda: running_executions(raw_db, a), timeout=30, what="A running the job")
    fleet.freeze(a)
    # B starts only now, so it can get the job only by rescuing it from A.
    b = fleet.spawn("B", concurrency=1, **TIMINGS)
    wait_until(
        lambda: raw_db.jobs.find_one({"_id": job.id, "status": "completed"}), timeout=30, what="B completes the job"
    )
    completed_by_b = raw_db.jobs.find_one({"_id": job.id})
    assert completed_by_b["result"]["worker"] == "B"
    assert running_executions(raw_db, a), "A is still frozen inside the handler"

    fleet.thaw(a)
    # A's one-second wait is long over: its handler returns at once and A tries to complete.
    wait_until(lambda: not running_executions(raw_db, a), timeout=30, what="A's handler to return")
    wait_until(
        lambda: "completion not recorded: the lease was lost" in a.log(), timeout=30, what="A to log the lost lease"
    )

    final = raw_db.jobs.find_one({"_id": job.id})
    assert final == completed_by_b, "A's late completion changed the job"
    first, second = executions_of(raw_db, job.id)
    assert (first["worker_id"], first["attempt"], first["outcome"]) == ("A", 1, "returned")
    assert (second["worker_id"], second["attempt"], second["outcome"]) == ("B", 2, "returned")
    assert first["end"] > second["start"], "the two executions overlapped, as the scenario intends"
    assert final["lease_token"] == second["token"] != first["token"]
    assert [(e["type"], e["lease_token"]) for e in final["errors"]] == [(LEASE_EXPIRED, first["token"])]
    # A keeps working after losing the lease.
    after = make_queue().enqueue("WORK", {"n": "after"})
    wait_until(lambda: raw_db.jobs.find_one({"_id": after.id, "status": "completed"}), timeout=30)
    assert a.alive() and b.alive()

    report = check_invariants(
        raw_db, expected_jobs=2, outages=fleet.outages, workers=2, faults=1, final_statuses=["completed"]
    )
    assert report.recoveries == 1, report.as_dict()
