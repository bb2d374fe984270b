"""A dedicated worker process for multi-process integration tests.

Run as ``python -m integration.worker_proc URI DB CONCURRENCY EXPECTED`` with
``tests/`` on ``PYTHONPATH``. It registers a ``TOUCH`` handler that records
each execution (job id, attempt, lease token, pid, start, end) in the
``executions`` collection, prints ``ready``, and runs until EXPECTED jobs are
completed, then stops gracefully and exits 0. Starting workers before the
jobs exist makes every process take part in the race.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import datetime, timezone

import mongoengine
from pymongo import MongoClient

from mongo_job_queue import create_job_queue

from .models import ALIAS, IntegrationJob


def main(uri: str, db: str, concurrency: int, expected: int) -> int:
    mongoengine.connect(db=db, host=uri, alias=ALIAS, uuidRepresentation="standard")
    executions = MongoClient(uri)[db]["executions"]
    queue = create_job_queue(
        job_model=IntegrationJob,
        config={"concurrency": concurrency, "poll_interval_base_ms": 10, "poll_interval_max_ms": 100},
    )

    @queue.handler("TOUCH")
    def touch(job: IntegrationJob) -> None:
        start = datetime.now(timezone.utc)
        threading.Event().wait(0.002)  # a little work, so claimers interleave
        executions.insert_one(
            {
                "job_id": job.id,
                "attempt": job.attempts,
                "token": job.lease_token,
                "pid": os.getpid(),
                "thread": threading.get_ident(),
                "start": start,
                "end": datetime.now(timezone.utc),
            }
        )

    queue.start_polling()
    print("ready", flush=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if queue.counts()["completed"] >= expected:
            break
        time.sleep(0.05)
    return 0 if queue.stop(timeout=30) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
