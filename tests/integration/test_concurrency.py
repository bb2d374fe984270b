"""Many claimers at once: threads in this process and separate worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]
JOBS = int(os.environ.get("MJQ_CLAIM_RACE_JOBS", "150"))


def _spawn_worker(uri: str, db: str, concurrency: int, expected: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "integration.worker_proc", uri, db, str(concurrency), str(expected)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc


def test_every_job_runs_exactly_once_across_threads_and_processes(
    make_queue, job_model, mongodb_uri, db_name, raw_db
) -> None:
    raw_db.executions.drop()
    local = make_queue(concurrency=4, poll_interval_base_ms=10)

    @local.handler("TOUCH")
    def touch(job) -> None:
        raw_db.executions.insert_one({"job_id": job.id, "attempt": job.attempts, "token": job.lease_token, "pid": 0})

    procs = [_spawn_worker(mongodb_uri, db_name, 4, JOBS) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        local.start_polling()
        local.enqueue_many([{"job_type": "TOUCH", "data": {"n": n}} for n in range(JOBS)])
        wait_until(lambda: job_model.objects(status="completed").count() == JOBS, timeout=240, what="all jobs done")
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    executions = list(raw_db.executions.find())
    job_ids = [e["job_id"] for e in executions]
    assert len(job_ids) == JOBS, "a job ran twice" if len(job_ids) > JOBS else "a job never ran"
    assert len(set(job_ids)) == JOBS
    # Each job was completed under the lease its one execution ran with.
    final_tokens = {d["_id"]: d["lease_token"] for d in raw_db.jobs.find({}, {"lease_token": 1})}
    assert all(final_tokens[e["job_id"]] == e["token"] for e in executions)
    assert all(e["attempt"] == 1 for e in executions)
    # Both worker processes and the local pool took part in the race.
    assert len({e["pid"] for e in executions}) == 3
    assert job_model.objects(status__in=["pending", "processing"]).count() == 0
