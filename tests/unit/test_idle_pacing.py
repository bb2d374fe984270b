"""How an idle worker's maintenance is paced: steps that say when they are next due, sweeps slowed while idle."""

from __future__ import annotations

import threading
from datetime import datetime

from helpers import holds_for, wait_until

from mongo_job_queue.clock import utcnow
from mongo_job_queue.config import QueueConfig
from mongo_job_queue.worker.maintenance import MaintenanceLoop, Service
from mongo_job_queue.worker.registry import registry_interval_ms, registry_stale_after_ms
from mongo_job_queue.worker.wakeup import new_stream_state


def run_loop(loop: MaintenanceLoop, *, listening: bool = False) -> tuple[threading.Event, threading.Thread]:
    stopping = threading.Event()
    if listening:  # as a database-wide change stream of this start would be
        state = new_stream_state(stopping)
        state.watches_pause = True
        state.listening.set()
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
        MaintenanceLoop([service, Service("tick", 0.02, lambda now: None)], utcnow, None, idle.is_set), listening=True
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


def test_without_a_listening_stream_an_idle_worker_keeps_its_intervals() -> None:
    runs: list[datetime] = []
    service = Service("catch-up", 0.02, runs.append, idle_interval_s=600.0)
    stopping, thread = run_loop(MaintenanceLoop([service], utcnow, None, lambda: True))
    try:
        wait_until(lambda: len(runs) >= 4, timeout=5, what="no stream tells it anything: at its interval")
    finally:
        stopping.set()
        thread.join(5)


def test_a_short_lease_claim_makes_the_paced_sweep_read_again_at_once() -> None:
    runs: list[datetime] = []

    def step(now: datetime) -> None:
        runs.append(now)

    stopping, thread = run_loop(
        MaintenanceLoop([Service("lease", 0.02, step, paced=True, idle_interval_s=600.0)], utcnow, None, lambda: True),
        listening=True,
    )
    try:
        wait_until(lambda: len(runs) == 1, timeout=5)
        holds_for(lambda: len(runs) == 1, 0.3, what="idle on the stream: the long interval")
        state = new_stream_state(stopping)
        state.short_lease_claimed.set()
        wait_until(lambda: len(runs) == 2, timeout=2, what="read again when the stream tells of a short lease")
    finally:
        stopping.set()
        new_stream_state(stopping).short_lease_claimed.set()  # as the waker's close() does
        thread.join(5)
    assert not thread.is_alive()
