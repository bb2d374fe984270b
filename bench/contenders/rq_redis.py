"""RQ on Redis, the non-MongoDB reference: what a Redis-backed Python queue does on this machine.

RQ runs one job at a time per worker process, so concurrency N is N worker
processes (``rq worker --worker-class rq.worker.SimpleWorker``: no fork per
job, log level WARNING), capped at ``max_procs`` on a small machine; the cap
is noted when it applies. Workers are paused with SIGSTOP between turns.
Jobs are enqueued in one pipeline (``enqueue_many``) with ``result_ttl=0``;
the clock runs from resuming the workers until the batch's counter (one
``INCR`` per job, see :mod:`bench.contenders.rq_tasks`) reached the batch
size and no job is still registered as started. CPU is the sum over the
worker processes. Redis commands are not counted: round trips per job are
a MongoDB figure.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any, Optional

from ..metrics import process_cpu_seconds
from . import Batch, Contender, Context, LineProcess, Unavailable, wait_until


class RqRedis(Contender):
    name = "rq[redis]"
    wire_bytes_na = "n/a: Redis, not MongoDB"
    description = "RQ SimpleWorker processes on Redis (reference, not MongoDB)"

    def __init__(self, ctx: Context, max_procs: int = 8) -> None:
        super().__init__(ctx)
        self.max_procs = max_procs
        self.queue_name = f"mjq-bench-{os.getpid()}"
        self.redis: Any = None
        self.queue: Any = None
        self.workers: list[LineProcess] = []
        self.key = ""

    def prepare(self) -> None:
        try:
            import redis
            import rq
            from rq import Queue
        except ImportError as exc:
            raise Unavailable(f"{exc.name} is not installed (pip install -e '.[bench]')") from exc
        self.redis = redis.Redis.from_url(self.ctx.redis_url)
        try:
            info = self.redis.info("server")
        except redis.RedisError as exc:
            raise Unavailable(f"Redis not reachable at {self.ctx.redis_url}: {exc}") from exc
        self.versions.update(
            rq=rq.__version__, **{"redis-py": redis.__version__, "redis server": info["redis_version"]}
        )
        self.queue = Queue(self.queue_name, connection=self.redis)

    def start(self, concurrency: int) -> None:
        from rq import Worker

        procs = min(concurrency, self.max_procs)
        if procs < concurrency:
            self.notes.append(f"concurrency {concurrency} run as {procs} worker processes (one job per process)")
        argv = [sys.executable, "-m", "rq.cli", "worker", "--url", self.ctx.redis_url, "--quiet"]
        argv += ["--worker-class", "rq.worker.SimpleWorker", "--results-ttl", "0"]
        self.workers = [
            LineProcess([*argv, "--name", f"{self.queue_name}-{i}-{uuid.uuid4().hex[:6]}", self.queue_name])
            for i in range(procs)
        ]
        wait_until(lambda: Worker.count(queue=self.queue) >= procs, 60, 0.05, "RQ workers to register")
        for w in self.workers:
            w.pause()

    def _jobs(self, jobs: int, key: str) -> list[Any]:
        from rq import Queue

        from .rq_tasks import noop

        return [Queue.prepare_data(noop, args=(key,), result_ttl=0) for _ in range(jobs)]

    def fill(self, jobs: int) -> None:
        self.key = f"{self.queue_name}:done:{uuid.uuid4().hex}"
        self.queue.enqueue_many(self._jobs(jobs, self.key))

    def _cpu(self) -> float:
        return sum(process_cpu_seconds(w.pid) for w in self.workers)

    def drain(self, jobs: int) -> Batch:
        cpu0, t0 = self._cpu(), time.perf_counter()
        for w in self.workers:
            w.resume()
        try:
            wait_until(lambda: int(self.redis.get(self.key) or 0) >= jobs, self.ctx.timeout_s, 0.002, "RQ jobs")
            wait_until(lambda: self.queue.started_job_registry.count == 0, 30, 0.002, "RQ bookkeeping")
            seconds, cpu = time.perf_counter() - t0, self._cpu() - cpu0
        finally:
            for w in self.workers:
                w.pause()
        self.redis.delete(self.key)
        return Batch(jobs, seconds, cpu, None)

    def clear(self) -> None:
        self.queue.empty()

    def enqueue(self, jobs: int, *, bulk: bool) -> Optional[float]:
        from .rq_tasks import noop

        key = f"{self.queue_name}:enqueue"
        t0 = time.perf_counter()
        if bulk:
            self.queue.enqueue_many(self._jobs(jobs, key))
        else:
            for _ in range(jobs):
                self.queue.enqueue(noop, key, result_ttl=0)
        seconds = time.perf_counter() - t0
        self.redis.delete(key)
        return seconds

    def stop_level(self) -> None:
        for w in self.workers:
            w.terminate()
        self.workers = []

    def close(self) -> None:
        self.stop_level()
        if self.queue is not None:
            self.queue.empty()
        if self.redis is not None:
            self.redis.close()
