"""Celery on kombu's MongoDB transport (``mongodb://`` broker URL), on the same server.

This is the Python job queue users would reach for first with MongoDB at
hand. The worker is a subprocess (``celery worker --pool threads -c N``,
without gossip, mingle, heartbeats or remote control, log level WARNING, no
result backend), paused with SIGSTOP while other contenders run. The bench
publishes the tasks with ``send_task`` (kombu has no bulk publish), resumes
the worker and times until its last task of the batch ran. Its CPU is read
from ``/proc`` for the worker process; its database commands are counted by
a listener inside the worker (see :mod:`bench.contenders.celery_worker`).

Note the difference in guarantees: kombu's MongoDB transport deletes a
message when it fetches it (``find_one_and_delete``), so a worker crash
loses the jobs it had prefetched; there is no lease and no retry state.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from typing import Any, Optional

from ..metrics import process_cpu_seconds
from . import Batch, Contender, Context, LineProcess, Unavailable, with_database

QUEUE = "mjq_bench"


class CeleryMongo(Contender):
    name = "celery[kombu-mongodb]"
    wire_bytes_na = "n/a: kombu's pymongo runs in the celery worker process"
    description = "Celery worker (threads pool) on kombu's MongoDB transport, no result backend"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.broker = with_database(ctx.uri, ctx.db_name)
        self.app: Any = None
        self.worker: Optional[LineProcess] = None
        self.commands: Counter[str] = Counter()
        self.batch = ""

    def prepare(self) -> None:
        try:
            import celery
            import kombu
            from celery import Celery
        except ImportError as exc:
            raise Unavailable(f"{exc.name} is not installed (pip install -e '.[bench]')") from exc
        self.versions.update(celery=celery.__version__, kombu=kombu.__version__)
        self.app = Celery("mjq_bench_producer", broker=self.broker)
        self.app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
        self.notes.append("worker: --pool threads, log level WARNING; messages are deleted on fetch (no lease)")

    def start(self, concurrency: int) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "bench.contenders.celery_worker", "worker"]
        argv += ["--pool", "threads", "--concurrency", str(concurrency), "--queues", QUEUE, "--loglevel", "WARNING"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.worker = LineProcess(argv, env={"BENCH_BROKER_URL": self.broker, "BENCH_QUEUE": QUEUE})
        ready = json.loads(self.worker.expect(lambda line: line.startswith('{"ready"'), timeout=60))
        self.commands = Counter(ready["commands"])
        self.worker.pause()

    def _publish(self, batch: str, jobs: int) -> None:
        for _ in range(jobs):
            self.app.send_task("bench.noop", args=(batch, jobs), queue=QUEUE)

    def fill(self, jobs: int) -> None:
        self.batch = uuid.uuid4().hex
        self._publish(self.batch, jobs)

    def drain(self, jobs: int) -> Batch:
        worker = self.worker
        assert worker is not None
        cpu0, t0 = process_cpu_seconds(worker.pid), time.time()
        worker.resume()
        try:
            line = worker.expect(lambda line: f'"batch": "{self.batch}"' in line, timeout=self.ctx.timeout_s)
            cpu = process_cpu_seconds(worker.pid) - cpu0
            server_end = self.ctx.server_cpu()
        finally:
            worker.pause()
        done = json.loads(line)
        total = Counter(done["commands"])
        commands = dict(total - self.commands)
        self.commands = total
        return Batch(jobs, done["t"] - t0, cpu, commands, server_cpu_end=server_end)

    def clear(self) -> None:
        self.ctx.db["messages"].delete_many({"queue": QUEUE})

    def enqueue(self, jobs: int, *, bulk: bool) -> Optional[float]:
        if bulk:
            return None
        t0 = time.perf_counter()
        self._publish(f"enqueue-{uuid.uuid4().hex}", jobs)
        return time.perf_counter() - t0

    def stop_level(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            self.worker = None

    def close(self) -> None:
        self.stop_level()
        if self.app is not None:
            self.app.close()
            self.app = None
