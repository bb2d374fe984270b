"""Limits in one process: mutex keys, caps per key, throttling, rates, and what shows."""

from __future__ import annotations

import threading
import time
from typing import Any

from helpers import wait_until


def test_mutex_jobs_run_one_at_a_time_per_key(make_queue, job_model) -> None:
    queue = make_queue(concurrency=8)
    lock = threading.Lock()
    running: dict[str, int] = {}
    peak: dict[str, int] = {}

    @queue.handler("M")
    def run(job: Any) -> None:
        with lock:
            running[job.mutex_key] = running.get(job.mutex_key, 0) + 1
            peak[job.mutex_key] = max(peak.get(job.mutex_key, 0), running[job.mutex_key])
        time.sleep(0.01)
        with lock:
            running[job.mutex_key] -= 1

    queue.enqueue_many({"job_type": "M", "mutex_key": f"k{n % 3}"} for n in range(30))
    started = time.monotonic()
    queue.start_polling()
    wait_until(lambda: queue.counts()["completed"] == 30, timeout=60, what="30 completed")
    print("took", time.monotonic() - started)
    assert peak == {"k0": 1, "k1": 1, "k2": 1}


def test_profile_claims(make_queue, job_model) -> None:
    queue = make_queue(concurrency=8)
    queue.register_handler("M", lambda job: None)
    queue.enqueue_many({"job_type": "M", "mutex_key": f"k{n % 3}"} for n in range(30))
    import cProfile
    import pstats

    queue.store.limits.mark_mutex()
    owner = queue.worker.poller.owner
    pr = cProfile.Profile()
    pr.enable()
    t = time.monotonic()
    got = []
    for _ in range(10):
        c = queue.store.jobs.claim(["M"], ["default"], owner)
        got.append(c)
        if c is not None:
            queue.store.jobs.complete(c)
            queue.store.limits.release(c.id, c.token)
    print("10 claims", time.monotonic() - t, sum(1 for c in got if c))
    pr.disable()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
