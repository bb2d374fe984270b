"""mongo-job-queue itself, measured only through its public API.

Each row is a *named config* (:data:`VARIANTS`): a mapping of public config
keys, to which the bench adds ``concurrency`` per level. A feature behind a
config key becomes a new row by adding one entry here, or ``--mjq NAME=JSON``
on the command line; a key the installed library does not know makes that
row "failed: ConfigError ..." instead of stopping the run.

What is measured here:

* **throughput**: the queue is filled with ``enqueue_many`` while no worker
  runs; the worker is started with the job type paused and left until it
  is idle (its change stream listening, its start-up calls done), as
  Celery's worker is started before its clock; then the clock runs from
  ``resume()`` until every job's completion write was acknowledged (read from the replies its own client
  gets, :class:`~bench.metrics.CompletionCounter`: nothing is polled on
  the server), then ``stop()``, which is outside the clock and outside the
  server's CPU figure.
* **round trips per job**: every command sent by the client of the job model's
  MongoEngine alias, by name (claim ``findAndModify`` or batched ``find`` +
  ``update``, completion ``update``, change-stream ``getMore`` ...), counted
  between the start of the 10% and of the 90% job of the drain (steady
  state), divided by those jobs; the whole drain's figure is kept beside it.
* **bytes per job**: the BSON sizes of those commands and their replies over
  the whole drain (after ``stop()``: its last writes included), per job.
* **CPU per job**: ``time.process_time()`` of this process over the drain.
  The embedded server is another process; nothing else runs here meanwhile.
  The library's logging stays at Python's default (WARNING), so the per-job
  INFO lines are not formatted.
* **pickup latency and idle cost**: see :func:`idle_profile`.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Optional

import mongoengine
from mongoengine import StringField

from mongo_job_queue import BaseJob, PersistentJobQueue, create_job_queue

from ..metrics import CommandCounter, CompletionCounter, SteadyWindow
from . import Batch, Contender, Context, wait_until

ALIAS = "mjq_bench"

#: Named configs of the library, one contender row each. Only public config keys.
VARIANTS: dict[str, dict[str, Any]] = {
    # The library's defaults: batched claims, group-commit acks, change-stream
    # wake-ups; polls 1 s after work, backing off to 30 s.
    "default": {},
    # One claim and one completion write per job, as before batching.
    "unbatched": {"batch_claims": False, "batch_acks": False},
    # The defaults without the change stream: its getMores are not on the job path.
    "no-wakeups": {"change_stream_wakeups": False},
    # Quick polls (50 ms backing off to 1 s), wake-ups on: an app that polls harder.
    "fast-poll": {"poll_interval_base_ms": 50, "poll_interval_max_ms": 1_000},
    # The same polls without change-stream wake-ups: pickup by polling alone.
    "fast-poll-no-wakeups": {
        "poll_interval_base_ms": 50,
        "poll_interval_max_ms": 1_000,
        "change_stream_wakeups": False,
    },
}

#: The commands sent by the job model's client; registered when the alias connects.
COUNTER = CommandCounter()
#: The completion writes acknowledged to that client: the end of a drain, seen without polling.
COMPLETIONS = CompletionCounter("bench_mjq_jobs")


class BenchJob(BaseJob):
    """The bench app's job model: BaseJob plus one field of the app's own."""

    tenant = StringField()
    meta = {"collection": "bench_mjq_jobs", "db_alias": ALIAS}


#: The bench's one job type, a no-op.
JOB_TYPE = "noop"
#: How long a worker's client must have sent nothing to count as started (its start-up calls done).
_QUIET_S = 0.2


def connect(ctx: Context) -> None:
    """Connect the model's alias, once, with the command counter on its client."""
    if ALIAS not in mongoengine.connection._connection_settings:
        mongoengine.connect(
            host=ctx.uri,
            db=ctx.db_name,
            alias=ALIAS,
            uuidRepresentation="standard",
            event_listeners=[COUNTER, COMPLETIONS],
        )


def disconnect() -> None:
    mongoengine.disconnect(alias=ALIAS)


def settle_seconds(config: dict[str, Any]) -> float:
    """Idle time after which the poller's interval has doubled up to ``poll_interval_max_ms``."""
    base = config.get("poll_interval_base_ms", 1_000) / 1000
    top = config.get("poll_interval_max_ms", 30_000) / 1000
    total, interval = 0.0, base
    while interval < top:
        total += interval
        interval *= 2
    return total + top  # and one full interval at the top


class _Handler:
    """The no-op handler: counts runs, stamps starts, signals the last one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.target = 0
        self.started_at: list[float] = []
        self.done = threading.Event()
        self.steady: Optional[SteadyWindow] = None

    def arm(self, target: int, steady: Optional[SteadyWindow] = None) -> None:
        with self.lock:
            self.count, self.target, self.steady = 0, target, steady
            self.started_at.clear()
            self.done.clear()

    def __call__(self, job: BenchJob) -> None:
        now = time.perf_counter()
        with self.lock:
            self.started_at.append(now)
            self.count += 1
            if self.steady is not None:
                self.steady.at(self.count)
            if self.count >= self.target:
                self.done.set()


class MjqContender(Contender):
    kind = "library"
    wire_bytes_na = ""

    def __init__(
        self, ctx: Context, variant: str, config: dict[str, Any], figures: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(ctx)
        self.figures = figures or frozenset({"throughput", "enqueue", "idle"})
        self.variant = variant
        self.config = dict(config)
        self.name = f"mjq[{variant}]"
        self.description = f"mongo-job-queue, config {self.config or 'defaults'}"
        self.handler = _Handler()
        self.queue: Optional[PersistentJobQueue[BenchJob]] = None

    @property
    def collection(self) -> Any:
        return self.ctx.db[BenchJob._meta["collection"]]

    def prepare(self) -> None:
        connect(self.ctx)
        self._make_queue(1)  # a key the library does not know fails here, as ConfigError
        BenchJob.ensure_indexes()
        import mongo_job_queue

        self.versions["mongo-job-queue"] = mongo_job_queue.__version__

    def _make_queue(self, concurrency: int) -> PersistentJobQueue[BenchJob]:
        config = {"concurrency": concurrency, **self.config}
        queue = create_job_queue(job_model=BenchJob, config=config)
        queue.register_handler(JOB_TYPE, self.handler)
        return queue

    def start(self, concurrency: int) -> None:
        self.queue = self._make_queue(concurrency)
        self.queue.ensure_indexes()

    def fill(self, jobs: int) -> None:
        assert self.queue is not None
        self.queue.enqueue_many(self._specs(jobs))

    @staticmethod
    def _specs(jobs: int) -> list[dict[str, Any]]:
        return [{"job_type": JOB_TYPE, "data": {"n": n}, "tenant": "acme"} for n in range(jobs)]

    def _warm_start(self, queue: PersistentJobQueue[BenchJob]) -> None:
        """Start the worker with its job type paused and wait until it is idle: the clock leaves its start out.

        Celery's worker is started before its clock too (and paused with
        SIGSTOP between rounds). Idle means its change stream listens (on a
        replica set, unless the row turns the stream off) and its client sent
        nothing for :data:`_QUIET_S`: the start-up sweeps and the registry
        write are done.
        """
        queue.pause(job_types=[JOB_TYPE])
        queue.start_polling()
        streams = self.config.get("change_stream_wakeups", True)
        if streams and self.ctx.control.topology_description.topology_type_name != "Single":
            wait_until(lambda: queue.worker.listening_for_jobs, 30, what="the worker's change stream")
        wait_until(lambda: time.monotonic() - COUNTER.last_at >= _QUIET_S, 30, what="the worker's start-up calls")

    def drain(self, jobs: int) -> Batch:
        queue = self.queue
        assert queue is not None
        self._warm_start(queue)
        steady = SteadyWindow(COUNTER, jobs)
        self.handler.arm(jobs, steady)
        COUNTER.reset()
        COMPLETIONS.reset()
        server_start = self.ctx.server_cpu()
        cpu0, t0 = time.process_time(), time.perf_counter()
        queue.resume(job_types=[JOB_TYPE])
        try:
            if not self.handler.done.wait(self.ctx.timeout_s):
                raise TimeoutError(f"{self.handler.count} of {jobs} jobs ran in {self.ctx.timeout_s:.0f} s")
            if not COMPLETIONS.wait(jobs, self.ctx.timeout_s):
                raise TimeoutError(f"{COMPLETIONS.completed} of {jobs} completion writes in {self.ctx.timeout_s:.0f} s")
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            server_end = self.ctx.server_cpu()
            commands = COUNTER.snapshot()
        finally:
            queue.stop(timeout=30)
        batch = Batch(jobs, seconds, cpu, commands, steady.result(), COUNTER.wire_bytes())
        batch.server_cpu_start, batch.server_cpu_end = server_start, server_end
        return batch

    def clear(self) -> None:
        self.collection.delete_many({})

    def enqueue(self, jobs: int, *, bulk: bool) -> float:
        queue = self._make_queue(1)  # not polling: no local wake-ups
        specs = self._specs(jobs)
        t0 = time.perf_counter()
        if bulk:
            queue.enqueue_many(specs)
        else:
            for spec in specs:
                queue.enqueue(spec["job_type"], spec["data"], tenant=spec["tenant"])
        return time.perf_counter() - t0

    def stop_level(self) -> None:
        if self.queue is not None:
            self.queue.stop(timeout=30)
            self.queue = None

    def close(self) -> None:
        self.stop_level()

    # -- idle worker ------------------------------------------------------------

    def idle_profile(self, window_s: float, windows: int, samples: int, rng: random.Random) -> dict[str, Any]:
        """Idle cost and pickup latency of a worker that has been idle long enough to back off fully.

        The worker starts on an empty queue and idles until its poll interval
        reached ``poll_interval_max_ms``. Then its commands are counted over
        ``windows`` consecutive windows of ``window_s`` (the idle cost). Then, per latency sample: wait a random
        phase within one poll interval, enqueue one job from a second queue
        object that does not poll (as a web process would: no in-process
        wake-up), and time from the enqueue's return (its insert acknowledged)
        to the handler's start; then idle again until fully backed off.
        """
        self.clear()
        settle = settle_seconds(self.config)
        top = self.config.get("poll_interval_max_ms", 30_000) / 1000
        worker = self._make_queue(1)
        producer = self._make_queue(1)
        latencies: list[float] = []
        worker.start_polling()
        try:
            time.sleep(settle)
            idle = []
            for _ in range(windows):
                COUNTER.reset()
                time.sleep(window_s)
                idle.append(COUNTER.snapshot())
            for _ in range(samples):
                time.sleep(rng.uniform(0, top))
                self.handler.arm(1)
                producer.enqueue(JOB_TYPE, {"n": 0}, tenant="acme")
                enqueued = time.perf_counter()
                if not self.handler.done.wait(self.ctx.timeout_s):
                    raise TimeoutError("an idle worker did not pick up a job")
                latencies.append(max(0.0, self.handler.started_at[0] - enqueued))
                wait_until(lambda: self.collection.count_documents({"status": "completed"}) >= 1, 30)
                self.clear()
                time.sleep(settle)
        finally:
            worker.stop(timeout=30)
        return {"idle_commands": idle, "window_s": window_s, "settle_s": settle, "latencies_s": latencies}
