"""A long-running worker does not grow: no leak of tracebacks, frames or job objects.

One worker process runs 1000 jobs (times ``MJQ_RELIABILITY_SCALE``) in
batches of 20: enqueue a batch, wait until every job is final, then delete
the batch so the collection, and the embedded server's scans, stay small
(each claim scans what is stored: batches of 100 took 4 minutes). A quarter
of the jobs fail with a large traceback: an exception raised 200 frames deep
with a 50 kB message,
the kind of object graph a worker leaks if it keeps an exception, its
traceback or a job around. The worker's resident memory (``VmRSS`` from
``/proc/<pid>/status``) after the last batch must stay within
``GROWTH_LIMIT_MB`` of its level after the warm-up batches.

Calibration (1500 jobs in batches of 100, growth after the warm-up): a
clean run grows by about 2 MB; the same run with a worker that keeps a
reference to every handler exception grows by about 34 MB, one that keeps
every job object by about 27 MB, some 23 kB a job: over the 900 jobs after
this run's warm-up, about 20 MB. ``GROWTH_LIMIT_MB`` (8) separates them.
``MJQ_RELIABILITY_SCALE=2`` runs 2000 jobs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import wait_until

from .harness import Report, check_invariants, save_report, scaled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

#: Small batches keep the claim's scan short: the embedded server's cost grows with pending jobs.
BATCH = 20
BATCHES = max(8, round(scaled(1000) / BATCH))
JOBS = BATCHES * BATCH
#: Pools, caches and allocator arenas fill up during the first batches.
WARMUP_BATCHES = 5
GROWTH_LIMIT_MB = 8.0
#: Makes each job (and so a leaked job object) weigh about 16 kB more; the server's cost does not change.
PAD = "x" * 16_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def batch_jobs(start: int) -> list[dict]:
    jobs = []
    for n in range(start, start + BATCH):
        if n % 4 == 0:
            data = {"raise": f"job {n} failed", "recursion": 200, "message_bytes": 50_000, "pad": PAD}
            jobs.append({"job_type": "WORK", "data": data, "max_retries": 0})
        else:
            jobs.append({"job_type": "WORK", "data": {"n": n, "pad": PAD}})
    return jobs


def test_worker_memory_stays_flat_over_thousands_of_jobs(fleet, raw_db, make_queue) -> None:
    worker = fleet.spawn("long-lived", concurrency=4, poll_base_ms=10, poll_max_ms=50, log_level="WARNING")
    producer = make_queue()
    samples: list[float] = []
    reports: list[Report] = []
    for start in range(0, JOBS, BATCH):  # a quarter of each batch fails
        producer.enqueue_many(batch_jobs(start))
        wait_until(
            lambda: raw_db.jobs.count_documents({"status": {"$in": ["completed", "failed"]}}) == BATCH,
            timeout=120,
            interval=0.2,
            what=f"batch at {start} final",
        )
        reports.append(check_invariants(raw_db, expected_jobs=BATCH, max_attempts=1, save=False))
        assert raw_db.jobs.count_documents({"status": "failed"}) == BATCH // 4
        raw_db.jobs.delete_many({})
        raw_db.executions.delete_many({})
        samples.append(rss_mb(worker.pid))
    assert worker.alive()

    # A leak only grows; the smaller of the last two samples discounts a momentary peak.
    baseline, final = samples[WARMUP_BATCHES - 1], min(samples[-2:])
    growth = final - baseline
    trace = ", ".join(f"{s:.1f}" for s in samples)
    report = Report.merged(reports, workers=1)
    report.extra = {"rss_mb": [round(s, 1) for s in samples], "growth_mb": round(growth, 1)}
    save_report(report)  # every batch was checked above; the table gets their sum
    assert growth < GROWTH_LIMIT_MB, f"RSS grew {growth:.1f} MB over {JOBS} jobs (MB after each batch: {trace})"
