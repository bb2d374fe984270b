"""A worker that lost a lease claims the same job again while the old handler still runs.

Per-run state is keyed by run (job id and lease token): the end of the old
run must neither remove the new run's entry nor put its stale token into the
heartbeat, so the new run keeps its lease and completes once.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from helpers import wait_until

from mongo_job_queue import Middleware


class ShiftClock:
    """Real time plus an offset that the test moves forward (lease expiry without waiting)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc).replace(tzinfo=None) + self.offset


class Ended(Middleware):
    """Sets one event per attempt when its run has written (or failed to write) its outcome."""

    def __init__(self) -> None:
        self.ended: dict[int, threading.Event] = {1: threading.Event(), 2: threading.Event()}
        self.outcomes: dict[int, str] = {}

    def after_process(self, queue: Any, job: Any, *, outcome: str, exc: Any, duration_s: float) -> None:
        self.outcomes[job.attempts] = outcome
        self.ended.setdefault(job.attempts, threading.Event()).set()


def test_the_same_worker_reclaiming_a_lost_job_keeps_the_new_runs_lease(make_queue, job_model) -> None:
    clock = ShiftClock()
    lease_ms = 3_000
    timing = {"clock": clock, "sync_clock": False, "lease_ms": lease_ms, "sweep_interval_ms": 600_000}
    worker = make_queue(concurrency=2, heartbeat_interval_ms=200, **timing)
    sweeper = make_queue(**timing)
    ended = Ended()
    worker.add_middleware(ended)
    attempts_seen: list[int] = []
    started = {1: threading.Event(), 2: threading.Event()}
    gates = {1: threading.Event(), 2: threading.Event()}

    @worker.handler("LONG")
    def long(job: Any) -> str:
        attempts_seen.append(job.attempts)
        started[job.attempts].set()
        assert gates[job.attempts].wait(60)
        return f"run {job.attempts}"

    # Heartbeats can be held back, so the first run's lease expires by the clock.
    hold = threading.Event()
    real_heartbeat = worker.store.jobs.heartbeat

    def heartbeat(*args: Any, **kwargs: Any) -> Any:
        while hold.is_set():
            time.sleep(0.01)
        return real_heartbeat(*args, **kwargs)

    worker.store.jobs.heartbeat = heartbeat  # type: ignore[method-assign]
    job = worker.enqueue("LONG", {})
    worker.start_polling()
    assert started[1].wait(20)

    hold.set()
    clock.offset += timedelta(milliseconds=lease_ms * 3)
    wait_until(lambda: sweeper.recover_orphans() == (1, 0), timeout=10, what="the sweep requeues the first run")
    hold.clear()
    # The same worker claims the job again while the first handler still runs.
    assert started[2].wait(20)
    gates[1].set()
    assert ended.ended[1].wait(20)

    collection = job_model._get_collection()
    for _ in range(3):
        clock.offset += timedelta(milliseconds=lease_ms * 2 // 3)
        wait_until(
            lambda: (
                collection.find_one({"_id": job.id})["lease_expires_at"]
                > clock() + timedelta(milliseconds=lease_ms // 2)
            ),
            timeout=10,
            what="the second run's lease is renewed",
        )
        assert sweeper.recover_orphans() == (0, 0)

    gates[2].set()
    wait_until(lambda: collection.find_one({"_id": job.id})["status"] == "completed", timeout=20)
    doc = collection.find_one({"_id": job.id})
    assert doc["attempts"] == 2
    assert doc["result"] == "run 2"
    assert attempts_seen == [1, 2]
    assert ended.outcomes[2] == "completed"
