"""Workers killed with SIGKILL while jobs are in flight.

Proves at-least-once with bounded recovery: the jobs of a worker that dies
without a word (no ``finally``, no stop) go back to the queue once their
lease expires and run again on another worker, within ``lease + sweep
interval + poll interval`` (plus a little slack for a loaded machine)
after the kill; the rerun counts as the next attempt and the error history
names the lost lease. Killing the rescuer too, or every worker at once,
loses nothing either: a fresh worker finishes the work.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from helpers import wait_until

from .harness import LEASE_EXPIRED, behaviour_handler, check_invariants, executions_of, running_executions, scaled

pytestmark = pytest.mark.integration

LEASE_MS, HEARTBEAT_MS, SWEEP_MS, POLL_MAX_MS = 1_500, 300, 200, 200
TIMINGS = {
    "lease_ms": LEASE_MS,
    "heartbeat_ms": HEARTBEAT_MS,
    "sweep_ms": SWEEP_MS,
    "poll_base_ms": 20,
    "poll_max_ms": POLL_MAX_MS,
}
#: Claim, dispatch and the recorder's insert on a busy two-core machine.
SLACK_S = 0.6
RECOVERY_BOUND_S = (LEASE_MS + SWEEP_MS + POLL_MAX_MS) / 1000 + SLACK_S


def _long_jobs(queue, n: int, *, slow_attempts: int):
    # Slow only on the attempts that get killed, so the final rerun is quick.
    return [
        queue.enqueue("WORK", {"sleep_ms": 5_000, "sleep_attempts": slow_attempts}, max_retries=5) for _ in range(n)
    ]


def _wait_running(raw_db, worker, n: int) -> None:
    what = f"{n} jobs running on {worker.worker_id}"
    wait_until(lambda: len(running_executions(raw_db, worker)) == n, timeout=30, what=what)


def test_orphans_of_a_killed_worker_rerun_within_the_recovery_bound(fleet, raw_db, make_queue) -> None:
    victim = fleet.spawn("victim", concurrency=4, **TIMINGS)
    jobs = _long_jobs(make_queue(), 4, slow_attempts=1)
    _wait_running(raw_db, victim, 4)
    # The rescuer starts idle (all jobs are taken), so recovery is not waiting for a free thread.
    fleet.spawn("rescuer", concurrency=4, **TIMINGS)
    killed_at = fleet.kill(victim)

    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == 4, timeout=30, what="orphans completed")
    for job in jobs:
        first, rerun = executions_of(raw_db, job.id)
        assert (first["worker_id"], first["attempt"], first["end"]) == ("victim", 1, None)
        assert (rerun["worker_id"], rerun["attempt"]) == ("rescuer", 2)
        recovery = (rerun["start"] - killed_at).total_seconds()
        assert recovery <= RECOVERY_BOUND_S, f"job {job.id} re-ran {recovery:.2f}s after the kill"
        doc = raw_db.jobs.find_one({"_id": job.id})
        assert doc["attempts"] == 2
        [rescue] = doc["errors"]
        assert rescue["type"] == LEASE_EXPIRED
        assert (rescue["attempt"], rescue["lease_token"]) == (1, first["token"])
        assert "lease expired on attempt 1: worker victim" in rescue["message"]

    report = check_invariants(
        raw_db, expected_jobs=4, outages=fleet.outages, workers=2, faults=1, final_statuses=["completed"]
    )
    assert report.recoveries == 4, report.as_dict()
    assert report.max_recovery_s is not None and report.max_recovery_s <= RECOVERY_BOUND_S, report.as_dict()


def test_killing_the_rescuer_too_loses_nothing(fleet, raw_db, make_queue) -> None:
    victim = fleet.spawn("victim", concurrency=4, **TIMINGS)
    jobs = _long_jobs(make_queue(), 4, slow_attempts=2)
    _wait_running(raw_db, victim, 4)
    rescuer = fleet.spawn("rescuer", concurrency=4, **TIMINGS)
    fleet.kill(victim)
    # The rescuer is killed in the middle of the reruns it took over.
    _wait_running(raw_db, rescuer, 4)
    fleet.kill(rescuer)
    fleet.spawn("fresh", concurrency=4, **TIMINGS)

    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == 4, timeout=30, what="jobs completed")
    for job in jobs:
        runs = executions_of(raw_db, job.id)
        assert [(e["worker_id"], e["attempt"]) for e in runs] == [("victim", 1), ("rescuer", 2), ("fresh", 3)]
        doc = raw_db.jobs.find_one({"_id": job.id})
        assert [(err["type"], err["lease_token"]) for err in doc["errors"]] == [
            (LEASE_EXPIRED, runs[0]["token"]),
            (LEASE_EXPIRED, runs[1]["token"]),
        ]
    report = check_invariants(
        raw_db, expected_jobs=4, outages=fleet.outages, workers=3, faults=2, final_statuses=["completed"]
    )
    assert report.recoveries == 8, report.as_dict()
    assert report.max_recovery_s is not None and report.max_recovery_s <= RECOVERY_BOUND_S, report.as_dict()


def test_killing_every_worker_then_starting_one_finishes_everything(fleet, raw_db, make_queue) -> None:
    workers = fleet.spawn_many(2, concurrency=4, **TIMINGS)
    producer = make_queue()
    long_jobs = _long_jobs(producer, 4, slow_attempts=1)
    short = scaled(60, minimum=10)
    producer.enqueue_many([{"job_type": "WORK", "data": {"sleep_ms": 20}, "max_retries": 5}] * short)
    long_ids = [job.id for job in long_jobs]
    wait_until(
        lambda: raw_db.executions.count_documents({"job_id": {"$in": long_ids}, "end": None}) == len(long_ids),
        timeout=30,
        what="the long jobs running",
    )
    for worker in workers:
        fleet.kill(worker)
    assert raw_db.jobs.count_documents({"status": "processing"}) > 0, "the kill stranded jobs"

    fleet.spawn("survivor", concurrency=4, **TIMINGS)
    total = len(long_jobs) + short
    wait_until(
        lambda: raw_db.jobs.count_documents({"status": "completed"}) == total,
        timeout=60,
        interval=0.2,
        what="every job completed",
    )
    report = check_invariants(
        raw_db, expected_jobs=total, outages=fleet.outages, workers=3, faults=2, final_statuses=["completed"]
    )
    assert report.recoveries >= 4, report.as_dict()


def test_sweep_interval_shorter_than_the_heartbeat_is_honoured(fleet, raw_db, make_queue, recorder) -> None:
    """Recovery promises ``lease_ms + sweep_interval_ms``, whatever the heartbeat interval.

    A sweeper with a 2 s heartbeat and a 100 ms sweep interval watches four
    leases that expire 400 ms apart; each must be rescued within the sweep
    interval (plus slack) of its expiry, not at the sweeper's next heartbeat.
    """
    # The sweeper handles another type only, so the rescued jobs stay pending for this test to drain.
    fleet.spawn("sweeper", types=["OTHER"], lease_ms=4_000, heartbeat_ms=2_000, sweep_ms=100)
    crashed = make_queue(lease_ms=500, heartbeat_interval_ms=100)
    crashed.register_handler("WORK", behaviour_handler(recorder, "drain"))
    jobs = [crashed.enqueue("WORK", {}) for _ in range(4)]
    expiries = {}
    for _ in jobs:
        # Claimed by a "worker" that never heartbeats: an orphan from the start.
        claimed = crashed.worker.claim_one()
        assert claimed is not None
        expiry = expiries[claimed.id] = claimed.doc["lease_expires_at"]
        wait_until(lambda e=expiry: crashed.store.now() >= e - timedelta(milliseconds=100))
    wait_until(
        lambda: raw_db.jobs.count_documents({"status": "pending", "attempts": 1}) == 4, timeout=30, what="rescues"
    )
    delays = []
    for job_id, expiry in expiries.items():
        [rescue] = raw_db.jobs.find_one({"_id": job_id})["errors"]
        delays.append(round((rescue["at"] - expiry).total_seconds(), 3))
    assert max(delays) <= 0.1 + 0.4, f"rescued this long after lease expiry (s): {sorted(delays)}"
    assert crashed.drain() == 4
    check_invariants(raw_db, expected_jobs=4, workers=1, final_statuses=["completed"])
