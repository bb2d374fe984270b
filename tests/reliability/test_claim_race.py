"""Claim race: three worker processes with four handler threads each, on a few hundred jobs.

Proves that the atomic claim hands every job to exactly one worker: every
job completes, exactly one execution per job (attempt 1, one lease token),
nothing is left pending or processing, delayed jobs do not start early, and
every process took part in the race.
"""

from __future__ import annotations

import pytest
from helpers import wait_until

from .harness import check_invariants, scaled

pytestmark = pytest.mark.integration

#: 150 jobs race twelve threads in three processes; each claim scans what is stored, so 300 took a minute.
JOBS = scaled(150, minimum=30)
WORKERS = 3
THREADS = 4
LEASE_MS = 15_000


def test_every_job_runs_exactly_once_across_processes(fleet, raw_db, job_model, make_queue) -> None:
    # Workers start before the jobs exist, so all of them race for each claim.
    # A lease long enough that a busy CI machine's slow replies cannot expire one: this scenario
    # proves the claim is atomic; re-runs after a lapsed lease are the kill and freeze scenarios' subject.
    workers = fleet.spawn_many(
        WORKERS,
        concurrency=THREADS,
        poll_base_ms=10,
        poll_max_ms=100,
        until_done=JOBS,
        lease_ms=LEASE_MS,
        heartbeat_ms=LEASE_MS // 5,
    )
    producer = make_queue()
    delayed = JOBS // 10
    producer.enqueue_many(
        [{"job_type": "WORK", "data": {"n": n}, "priority": n % 3} for n in range(JOBS - delayed)]
        + [{"job_type": "WORK", "data": {"n": n}, "delay_ms": 300 + 10 * n} for n in range(delayed)]
    )
    wait_until(
        lambda: raw_db.jobs.count_documents({"status": "completed"}) == JOBS,
        timeout=120,
        interval=0.2,
        what=f"{JOBS} jobs completed",
    )
    for worker in workers:
        assert worker.wait_exit(timeout=60) == 0, worker.log()[-3000:]

    report = check_invariants(raw_db, expected_jobs=JOBS, max_attempts=1, workers=WORKERS, final_statuses=["completed"])
    assert report.executions == JOBS, report.as_dict()
    assert report.statuses == {"completed": JOBS}, report.as_dict()
    pids = {e["pid"] for e in raw_db.executions.find({}, {"pid": 1})}
    assert pids == {w.pid for w in workers}, "every worker process took part in the race"
