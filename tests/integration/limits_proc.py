"""A worker process for the limit tests: records every run's start and end in one global order.

Run as ``python -m integration.limits_proc URI DB CONCURRENCY [CLOCK_OFFSET_S]``
with ``tests/`` on ``PYTHONPATH``. Its ``LIM`` handler takes a number from
one log document in MongoDB: each start and end is one atomic ``$push``
onto its ``events`` array, so the events of every process are in one
order (no host clock is trusted). It sleeps ``data.sleep_ms`` between.
A run whose outcome was fenced out (lease lost) adds a ``lost`` event.
A job with ``data.count_only`` only adds one to the ``starts`` document
(the rate test: a few fields, where an array of every event grows a
document the server rewrites at each start).
It prints ``ready`` and runs until SIGTERM or SIGKILL. ``CLOCK_OFFSET_S``
shifts this process's clock (a skewed host).
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta
from typing import Any

import mongoengine
from pymongo import MongoClient

from mongo_job_queue import Middleware, create_job_queue
from mongo_job_queue.clock import utcnow

from .models import ALIAS, IntegrationJob

TIMINGS = {
    "lease_ms": 4_000,
    "heartbeat_interval_ms": 800,
    "sweep_interval_ms": 200,
    "poll_interval_base_ms": 10,
    "poll_interval_max_ms": 100,
}


def record(db: Any, kind: str, job: IntegrationJob) -> None:
    """Append one event of ``job`` to the one log document: its place in the array is the global order."""
    event = {
        "kind": kind,
        "job": job.id,
        "token": job.lease_token,
        "mutex": job.mutex_key,
        "org": job.organization,
        "pid": os.getpid(),
    }
    db.limit_log.update_one({"_id": "log"}, {"$push": {"events": event}}, upsert=True)


def count(db: Any) -> None:
    """Count one start in the ``starts`` document, in total and by process: a few fields, however many starts."""
    db.limit_log.update_one({"_id": "starts"}, {"$inc": {"total": 1, f"by_pid.{os.getpid()}": 1}}, upsert=True)


class LeaseLost(Middleware):
    """Records each run whose outcome was fenced out (its lease lapsed, or was revoked for its limiter)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def on_lease_lost(self, queue: Any, doc: dict[str, Any]) -> None:
        event = {"kind": "lost", "job": doc["_id"], "token": doc.get("lease_token"), "pid": os.getpid()}
        self.db.limit_log.update_one({"_id": "log"}, {"$push": {"events": event}}, upsert=True)


def main(uri: str, db_name: str, concurrency: int, offset_s: float) -> int:
    mongoengine.connect(db=db_name, host=uri, alias=ALIAS, uuidRepresentation="standard")
    db = MongoClient(uri)[db_name]
    offset = timedelta(seconds=offset_s)
    queue = create_job_queue(
        job_model=IntegrationJob, config={"concurrency": concurrency, **TIMINGS}, clock=lambda: utcnow() + offset
    )

    queue.add_middleware(LeaseLost(db))

    @queue.handler("LIM")
    def run(job: IntegrationJob) -> None:
        if job.data.get("count_only"):
            count(db)
            return
        record(db, "start", job)
        slow = job.attempts <= job.data.get("slow_attempts", job.attempts)
        threading.Event().wait((job.data.get("sleep_ms", 5) if slow else 5) / 1000)
        record(db, "end", job)

    queue.run_worker(stop_timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0))
