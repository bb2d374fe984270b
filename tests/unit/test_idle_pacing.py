"""How an idle worker's maintenance is paced: steps that say when they are next due, sweeps slowed while idle."""

from __future__ import annotations

import threading
from datetime import datetime

from helpers import holds_for, wait_until

from mongo_job_queue.clock import utcnow
from mongo_job_queue.config import QueueConfig
from mongo_job_queue.worker.maintenance import MaintenanceLoop, Service
from mongo_job_queue.worker.registry import registry_interval_ms, registry_stale_after_ms


def run_loop(loop: MaintenanceLoop) -> tuple[threading.Event, threading.Thread]:
    stopping = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stopping,), daemon=True)
    thread.start()
    return stopping, thread


def test_a_paced_step_runs_again_when_it_says_not_at_its_interval() -> None:
    runs: list[datetime] = []

    def step(now: datetime) -> float:
        runs.append(now)
        return 0.01

    stopping, thread = run_loop(MaintenanceLoop([Service("paced", 600.0, step, paced=True)], utcnow))
    try:
        wait_until(lambda: len(runs) >= 5, timeout=5, what="the step ran by its own pace")
    finally:
        stopping.set()
        thread.join(5)


def test_a_paced_step_that_says_nothing_waits_its_interval() -> None:
    runs: list[datetime] = []

    def step(now: datetime) -> None:
        runs.append(now)

    stopping, thread = run_loop(MaintenanceLoop([Service("paced", 600.0, step, paced=True)], utcnow))
    try:
        wait_until(lambda: len(runs) == 1, timeout=5)
        holds_for(lambda: len(runs) == 1, 0.3, what="no second run before the interval")
    finally:
        stopping.set()
        thread.join(5)


def test_a_catch_up_sweep_slows_down_while_idle_and_speeds_up_when_busy() -> None:
    runs: list[datetime] = []
    idle = threading.Event()
    idle.set()
    service = Service("catch-up", 0.02, runs.append, idle_interval_s=600.0)
    stopping, thread = run_loop(
        MaintenanceLoop([service, Service("tick", 0.02, lambda now: None)], utcnow, None, idle.is_set)
    )
    try:
        wait_until(lambda: len(runs) == 1, timeout=5)
        holds_for(lambda: len(runs) == 1, 0.3, what="idle: once per idle interval")
        idle.clear()
        wait_until(lambda: len(runs) >= 4, timeout=5, what="busy: at its interval again")
    finally:
        stopping.set()
        thread.join(5)


def test_the_registry_writes_an_unchanged_document_once_a_minute_and_its_bound_follows() -> None:
    default = QueueConfig()
    assert registry_interval_ms(default) == 60_000
    assert registry_stale_after_ms(default) == 180_000
    fast = QueueConfig(lease_ms=3_000, heartbeat_interval_ms=500)
    assert registry_interval_ms(fast) == 2_000
    assert registry_stale_after_ms(fast) == 6_000
    long_lease = QueueConfig(lease_ms=600_000)  # a beat every 150 s: never less often than the heartbeat
    assert registry_interval_ms(long_lease) == 150_000
    assert registry_stale_after_ms(long_lease) == 600_000
