"""An idle poller asleep by its change stream never sleeps past a job that came due while it looked.

The adversarial review of the idle-cost change found it: a claim that found
nothing took one ``now``, the read of the next due time a later one, and a
job due between the two (a few milliseconds) was neither claimed nor waited
for; the poller slept ten minutes. Small delays hit that window.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import wait_until

pytestmark = pytest.mark.integration


def test_jobs_with_small_delays_each_start_on_an_idle_worker(make_queue) -> None:
    queue = make_queue(poll_interval_base_ms=1_000, poll_interval_max_ms=30_000)  # only the stream wakes it
    started: dict[Any, float] = {}
    ran = threading.Condition()

    def handler(job: Any) -> None:
        with ran:
            started[job.id] = time.monotonic()
            ran.notify_all()

    queue.register_handler("T", handler)
    queue.start_polling()
    wait_until(lambda: queue.worker.listening_for_jobs, timeout=30, what="the worker's change stream")
    late = []
    for delay_ms in range(1, 61, 3):
        at = time.monotonic()
        job = queue.enqueue("T", {}, delay_ms=delay_ms)
        with ran:
            ran.wait_for(lambda job=job: job.id in started, timeout=3)
        if job.id not in started or started[job.id] - at > 1.5:
            late.append(delay_ms)
    assert late == [], f"jobs with these delays (ms) started late or not at all: {late}"
