"""How much each run size measures.

The embedded server scans its collections linearly: a claim on a collection
of a few hundred documents costs tens of milliseconds, and many concurrent
claimers on it collapse (the limit's 32 threads manage a few jobs per
second), so the full run keeps queues at 200 jobs unless ``--uri`` points at
a real ``mongod`` (then 2,000). ``--tiny`` is the smoke test's size (seconds,
no peers); ``--quick`` (100-job queues, the default config only) takes a few
minutes, mostly the limit and Agenda at concurrency 32; the full run is what
a quiet machine should run for the record.

Pickup latency and idle cost need a worker that has backed off to its
``poll_interval_max_ms``: with the library's default (30 s), each latency
sample costs about a minute. A run size therefore caps the poll interval it
waits for; a config above the cap is reported as skipped, with the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["PLANS", "Plan"]


@dataclass(frozen=True)
class Plan:
    name: str
    jobs: tuple[int, ...]  # queue sizes of the throughput figure
    reps: int  # repetitions (rounds) of every measurement
    concurrency: tuple[int, ...]
    peers: bool  # Celery, Agenda and RQ
    mjq_variants: tuple[str, ...]  # configs measured for throughput, enqueue and memory
    idle_variants: tuple[str, ...]  # configs measured for pickup latency and idle cost
    enqueue_jobs: int
    latency_samples: int
    max_idle_poll_ms: int  # configs polling slower than this get no latency/idle figures
    idle_window_s: float
    memory_checkpoints: tuple[int, int]
    memory_chunk: int
    rq_max_procs: int = 8  # RQ runs one job per process: at most this many worker processes
    timeout_s: float = 300.0

    def replace(self, **changes: object) -> Plan:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


PLANS = {
    "tiny": Plan(
        name="tiny",
        jobs=(30,),
        reps=1,
        concurrency=(1, 8),
        peers=False,
        mjq_variants=("default",),
        idle_variants=("fast-poll",),
        enqueue_jobs=30,
        latency_samples=3,
        max_idle_poll_ms=1_000,
        idle_window_s=3.0,
        memory_checkpoints=(20, 60),
        memory_chunk=20,
        timeout_s=60.0,
    ),
    "quick": Plan(
        name="quick",
        jobs=(100,),
        reps=2,
        concurrency=(1, 8, 32),
        peers=True,
        mjq_variants=("default",),
        idle_variants=("fast-poll", "fast-poll-no-wakeups"),
        enqueue_jobs=100,
        latency_samples=4,
        max_idle_poll_ms=1_000,
        idle_window_s=4.0,
        memory_checkpoints=(200, 600),
        memory_chunk=200,
        rq_max_procs=4,
    ),
    "full": Plan(
        name="full",
        jobs=(200,),
        reps=5,
        concurrency=(1, 8, 32),
        peers=True,
        mjq_variants=("default", "unbatched", "no-wakeups"),
        idle_variants=("default", "fast-poll", "fast-poll-no-wakeups"),
        enqueue_jobs=200,
        latency_samples=5,
        max_idle_poll_ms=30_000,
        idle_window_s=60.0,
        memory_checkpoints=(1_000, 10_000),
        memory_chunk=250,
        rq_max_procs=8,
        timeout_s=600.0,
    ),
}

#: With a real server (``--uri``) the full run may use bigger queues.
FULL_EXTERNAL_JOBS = (2_000,)
