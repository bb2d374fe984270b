"""Shared harness of the reliability suite: record executions, run worker fleets, check invariants.

Scenario tests drive real worker processes (``python -m reliability.worker``)
and in-process queues against one MongoDB (the embedded server, or
``MONGODB_URI``), record every handler execution in the ``executions``
collection of the test database, and finish with :func:`check_invariants`.

API
---

Sizes
    ``SCALE`` is ``MJQ_RELIABILITY_SCALE`` (float, default 1.0).
    ``scaled(n, minimum=1)`` multiplies a job count by it. Scale job counts,
    never timings: timings are what a scenario asserts.

Recording (:class:`Recorder`, :func:`behaviour_handler`)
    ``Recorder(uri, db)`` writes one document per execution to ``executions``
    on its *own* client (app name ``mjq-reliability-recorder``, so failpoints
    aimed at a queue's connection never hit it)::

        {_id, job_id, type, attempt, token, worker_id, pid, thread,
         run_at,            # the job's run_at as claimed
         start, end,        # naive UTC datetimes (ms), like the queue's own times
         outcome,           # "returned" | "raised" | None (still running or died)
         error, result}

    ``start`` is written when the handler begins, ``end``/``outcome`` when it
    returns or raises, so an execution cut short by ``kill -9`` or
    ``os._exit`` keeps ``end = None``. Times come from the recorder's
    ``clock``: worker processes use their queue's own server-corrected
    clock (``queue.store.now``), in-process tests the ``server_clock``
    fixture (:func:`measure_server_clock`), so they compare with the times
    the queue writes (``run_at``, ``errors[].at``, ``lease_expires_at``).

    ``behaviour_handler(recorder, worker_id)`` returns a handler that records
    itself and behaves as the job's ``data`` says:

    ============================  ============================================
    ``sleep_ms: N``               work N ms (``threading.Event().wait``)
    ``sleep_attempts: N``         with ``sleep_ms``: only while ``attempt <= N``
    ``exit: true``                ``os._exit(1)``: the process dies (poison)
    ``exit_attempts: N``          with ``exit``: only while ``attempt <= N``
    ``raise: "msg"``              raise ``RuntimeError("msg")``
    ``raise_type: "Name"``        raise that type instead: one of
                                  :data:`RAISABLE` (``SystemExit``,
                                  ``KeyboardInterrupt``, ``GeneratorExit``,
                                  ``UnprintableError``, ``FailJob``, ...)
    ``raise_attempts: N``         raise only while ``attempt <= N``
                                  (a transient failure)
    ``recursion: N``              raise from N nested frames (big traceback)
    ``message_bytes: N``          repeat the message to about N characters
    ============================  ============================================

    A handler that returns gives ``{"worker": worker_id, "token": token,
    "attempt": attempt}``, stored as the job's result and in the execution.

Worker processes (:class:`Fleet`, :class:`WorkerProcess`)
    ``Fleet(uri, db, log_dir, clock=..., module=..., **defaults)`` spawns
    ``python -m reliability.worker`` processes (or another ``module`` taking
    the same options). ``fleet.spawn(worker_id=None, **opts)`` starts one
    and waits for its ``ready`` line; ``fleet.spawn_many(n, **opts)`` starts
    n in parallel. Options are the worker's flags with underscores
    (``concurrency=4, lease_ms=1500, heartbeat_ms=300, sweep_ms=200,
    types=["A", "B"], until_done=300, clock_offset_ms=..., sync_clock=0``;
    see ``python -m reliability.worker --help``). The worker runs the
    library's ``run_worker`` loop, so ``fleet.kill(w, signal.SIGTERM)`` is a
    graceful stop. ``fleet.kill(w)`` (SIGKILL, reaped), ``fleet.freeze(w)``
    (SIGSTOP) and ``fleet.thaw(w)`` (SIGCONT) act on one worker; kills and
    freezes are remembered in ``fleet.outages`` (pid -> server time), which
    :func:`check_invariants` uses to measure recovery.
    ``fleet.replace_dead()`` respawns exited workers (a supervisor loop's
    step). ``w.log()`` is a worker's combined stdout/stderr (its log lines),
    ``w.wait_exit()`` its exit code, ``fleet.status(w)`` its last status
    document (pid, live handler threads, in-flight jobs). ``fleet.close()``
    kills every worker still alive, frozen ones included.

Helpers
    ``running_executions(db, worker=None)``: executions started and not
    ended; ``executions_of(db, job_id)``: a job's executions by attempt;
    ``handler_threads(worker_id)``: live handler threads of an in-process
    worker; ``measure_server_clock(client)``: a clock on the server's time.

Fixtures (``tests/reliability/conftest.py``, on top of ``tests/conftest.py``)
    ``executions`` (emptied per test), ``server_clock``, ``recorder`` (for
    in-process queues) and ``fleet`` (empties the jobs collection; kills
    every worker at teardown).

Invariants (:func:`check_invariants` -> :class:`Report`)
    See the function. Reports are appended as JSON lines to the file named by
    ``MJQ_RELIABILITY_REPORT`` when it is set; ``python -m reliability.report``
    (``PYTHONPATH=tests``, from the repository root) runs the suite that way
    and prints one table.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from helpers import wait_until
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from mongo_job_queue import FailJob
from mongo_job_queue.clock import to_naive_utc, utcnow

__all__ = [
    "RAISABLE",
    "SCALE",
    "TESTS_DIR",
    "Fleet",
    "Recorder",
    "Report",
    "UnprintableError",
    "WorkerProcess",
    "behaviour_handler",
    "check_invariants",
    "executions_of",
    "handler_threads",
    "measure_server_clock",
    "running_executions",
    "save_report",
    "scaled",
]

TESTS_DIR = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("MJQ_RELIABILITY_SCALE", "1.0"))
LEASE_EXPIRED = "mongo_job_queue.errors.LeaseExpired"
FINAL = ("completed", "failed")


def scaled(n: int, minimum: int = 1) -> int:
    """``n`` times ``MJQ_RELIABILITY_SCALE``, at least ``minimum``."""
    return max(minimum, round(n * SCALE))


def measure_server_clock(client: MongoClient[Any], samples: int = 5) -> Callable[[], datetime]:
    """A clock reading the server's time: the local clock plus its offset from ``hello.localTime``.

    The queue judges due times and leases by the server's clock (``sync_clock``),
    so the recorder and the kill times use it too; on one host the offset is ~0.
    The sample with the shortest round trip wins: its midpoint error is smallest.
    """
    best: tuple[timedelta, timedelta] | None = None
    for _ in range(samples):
        before = utcnow()
        server = client.admin.command("hello").get("localTime")
        after = utcnow()
        if not isinstance(server, datetime):
            return utcnow
        offset = to_naive_utc(server) - (before + (after - before) / 2)
        if best is None or after - before < best[0]:
            best = (after - before, offset)
    assert best is not None
    offset = best[1]
    return lambda: utcnow() + offset


# -- recording ----------------------------------------------------------------


class Recorder:
    """Writes one ``executions`` document per handler run, on a client of its own."""

    def __init__(
        self,
        uri: str,
        db: str,
        *,
        collection: str = "executions",
        clock: Callable[[], datetime] = utcnow,
        timeout_ms: int | None = None,
    ):
        # timeout_ms: bound each write and retry it until it lands (the network
        # partition scenario cuts the recorder's connections too; an unbounded
        # write would hang the handler on a dead connection for minutes).
        self.timeout_ms = timeout_ms
        bounds = {"socketTimeoutMS": timeout_ms, "connectTimeoutMS": timeout_ms} if timeout_ms else {}
        self._client: MongoClient[dict[str, Any]] = MongoClient(uri, appname="mjq-reliability-recorder", **bounds)
        self.coll = self._client[db][collection]
        self.clock = clock

    def _write(self, write: Callable[[], Any]) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                write()
                return
            except DuplicateKeyError:
                return  # an earlier try of this insert landed
            except ConnectionFailure:
                if not self.timeout_ms or time.monotonic() > deadline:
                    raise

    def started(self, job: Any, worker_id: str) -> ObjectId:
        exec_id = ObjectId()
        doc = {
            "_id": exec_id,
            "job_id": job.pk,
            "type": job.type,
            "attempt": job.attempts,
            "token": job.lease_token,
            "worker_id": worker_id,
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
            "run_at": job.run_at,
            "start": self.clock(),
            "end": None,
            "outcome": None,
        }
        self._write(lambda: self.coll.insert_one(doc))
        return exec_id

    def finished(self, exec_id: ObjectId, outcome: str, *, result: Any = None, error: str | None = None) -> None:
        fields = {"end": self.clock(), "outcome": outcome, "result": result, "error": error}
        self._write(lambda: self.coll.update_one({"_id": exec_id}, {"$set": fields}))

    def close(self) -> None:
        self._client.close()


class UnprintableError(Exception):
    """An exception whose ``__str__`` itself raises."""

    def __str__(self) -> str:
        raise ValueError("__str__ of UnprintableError raised")


RAISABLE: dict[str, Callable[[str], BaseException]] = {
    "RuntimeError": RuntimeError,
    "ConnectionError": ConnectionError,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "UnprintableError": UnprintableError,
    "FailJob": FailJob,
}


def _raise_from_depth(depth: int, exc: BaseException) -> None:
    if depth > 0:
        _raise_from_depth(depth - 1, exc)
    raise exc


def behaviour_handler(recorder: Recorder, worker_id: str) -> Callable[[Any], Any]:
    """A handler that records its execution and behaves as ``job.data`` says (see the module docstring)."""

    def handle(job: Any) -> Any:
        data = job.data or {}
        attempt = int(job.attempts)
        exec_id = recorder.started(job, worker_id)
        outcome, result, error = "raised", None, None
        try:
            if data.get("sleep_ms") and attempt <= data.get("sleep_attempts", attempt):
                threading.Event().wait(data["sleep_ms"] / 1000)
            if data.get("exit") and attempt <= data.get("exit_attempts", attempt):
                os._exit(1)  # no finally, no flush: like a segfault or the OOM killer
            if ("raise" in data or "raise_type" in data) and attempt <= data.get("raise_attempts", attempt):
                message = str(data.get("raise", "handler failure"))
                if data.get("message_bytes"):
                    message = (message + " ") * (int(data["message_bytes"]) // (len(message) + 1) + 1)
                exc = RAISABLE[data.get("raise_type", "RuntimeError")](message)
                error = type(exc).__name__
                _raise_from_depth(int(data.get("recursion", 0)), exc)
            result = {"worker": worker_id, "token": job.lease_token, "attempt": attempt}
            outcome = "returned"
            return result
        finally:
            recorder.finished(exec_id, outcome, result=result, error=error)

    return handle


def running_executions(db: Database[Any], worker: WorkerProcess | None = None) -> list[dict[str, Any]]:
    """Executions that started and have not ended (of one worker process, if given)."""
    query: dict[str, Any] = {"end": None}
    if worker is not None:
        query["pid"] = worker.pid
    return list(db.executions.find(query))


def executions_of(db: Database[Any], job_id: ObjectId) -> list[dict[str, Any]]:
    """A job's executions, oldest attempt first."""
    return sorted(db.executions.find({"job_id": job_id}), key=lambda e: (e["attempt"], e["start"]))


def handler_threads(worker_id: str) -> int:
    """Live handler threads of the queue worker named ``worker_id`` in this process."""
    prefix = f"mjq-{worker_id}-handler-"
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive())


# -- worker processes ---------------------------------------------------------


@dataclass
class WorkerProcess:
    """One ``reliability.worker`` process of a :class:`Fleet`."""

    worker_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    options: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if "\nready\n" in "\n" + self.log():
                return True
            if not self.alive():
                raise AssertionError(f"worker {self.worker_id} exited with {self.proc.returncode}:\n{self.log()}")
            return False

        wait_until(ready, timeout=timeout, interval=0.05, what=f"worker {self.worker_id} to print 'ready'")

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)


class Fleet:
    """Spawns, kills, freezes and reaps worker processes; :meth:`close` leaves none behind."""

    def __init__(
        self,
        uri: str,
        db: str,
        log_dir: Path,
        *,
        clock: Callable[[], datetime] = utcnow,
        module: str = "reliability.worker",
        **defaults: Any,
    ) -> None:
        self.uri = uri
        #: The worker's module, run with ``python -m``; it must accept the same options.
        self.module = module
        self.clock = clock
        self.db = db
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.defaults = defaults
        self.workers: list[WorkerProcess] = []
        #: pid -> UTC time the test killed or froze that worker.
        self.outages: dict[int, datetime] = {}
        self._frozen: set[int] = set()
        self._status = MongoClient(uri)[db]["worker_status"]

    def _start(self, worker_id: str | None, options: Mapping[str, Any]) -> WorkerProcess:
        worker_id = worker_id or f"w{len(self.workers) + 1}"
        opts = {**self.defaults, **options}
        argv = [sys.executable, "-m", self.module, "--uri", self.uri, "--db", self.db]
        argv += ["--worker-id", worker_id]
        for key, value in opts.items():
            if value is None:
                continue
            argv += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")] if p),
            "PYTHONUNBUFFERED": "1",
        }
        log_path = self.log_dir / f"{worker_id}-{len(self.workers)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(worker_id, proc, log_path, opts)
        self.workers.append(worker)
        return worker

    def spawn(self, worker_id: str | None = None, *, ready: bool = True, **options: Any) -> WorkerProcess:
        """Start one worker; by default wait until it polls."""
        worker = self._start(worker_id, options)
        if ready:
            worker.wait_ready()
        return worker

    def spawn_many(self, n: int, **options: Any) -> list[WorkerProcess]:
        """Start ``n`` workers in parallel and wait until all of them poll."""
        started = [self._start(None, options) for _ in range(n)]
        for worker in started:
            worker.wait_ready()
        return started

    def kill(self, worker: WorkerProcess, sig: int = signal.SIGKILL) -> datetime:
        """Send ``sig`` (SIGKILL by default) and, for SIGKILL, reap the process; return the kill time."""
        at = self.clock()
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            self.outages.setdefault(worker.pid, at)
        worker.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            worker.proc.wait(timeout=30)
            self._frozen.discard(worker.pid)
        return at

    def freeze(self, worker: WorkerProcess) -> datetime:
        """SIGSTOP: the process stops heartbeating without dying."""
        self._frozen.add(worker.pid)
        return self.kill(worker, signal.SIGSTOP)

    def thaw(self, worker: WorkerProcess) -> None:
        worker.proc.send_signal(signal.SIGCONT)
        self._frozen.discard(worker.pid)

    def kill_in_flight(self, worker: WorkerProcess, busy: Callable[[], bool], timeout: float = 60) -> datetime:
        """SIGKILL ``worker`` at a moment when ``busy()`` holds, and return the kill time.

        Seeing it busy, then killing it, races the handler's end on a loaded machine (a short job
        finishes in between); frozen, it cannot finish, so ``busy()`` is checked on a stopped process
        and the kill lands on what was seen. When it is idle it is thawed and looked at again.
        """
        deadline = time.monotonic() + timeout
        while True:
            at = self.freeze(worker)
            if busy():
                self.kill(worker)
                return at
            self.thaw(worker)
            self.outages.pop(worker.pid, None)
            if time.monotonic() > deadline:
                raise AssertionError(f"{worker.worker_id} was never seen busy in {timeout} s")
            time.sleep(0.05)

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def replace_dead(self, *, ready: bool = False) -> list[WorkerProcess]:
        """Respawn every worker that exited, under the same id and options; return the new ones.

        Only the latest process of each worker id is considered, so a worker
        replaced once is not replaced again for the same death.
        """
        latest: dict[str, WorkerProcess] = {}
        for worker in self.workers:
            latest[worker.worker_id] = worker
        replaced = []
        for worker_id, worker in latest.items():
            if not worker.alive():
                self.outages.setdefault(worker.pid, self.clock())
                replaced.append(self._start(worker_id, worker.options))
        if ready:
            for worker in replaced:
                worker.wait_ready()
        return replaced

    def status(self, worker: WorkerProcess) -> dict[str, Any] | None:
        """The worker's last status document, or None before its first one."""
        return self._status.find_one({"_id": worker.worker_id, "pid": worker.pid})

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGCONT)  # a stopped process dies of SIGKILL too, but be plain
                    worker.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=30)
        self._status.database.client.close()


# -- invariants ---------------------------------------------------------------


@dataclass
class Report:
    """What one scenario did and which invariants it broke (``violations``)."""

    scenario: str
    jobs: int = 0
    executions: int = 0
    workers: int = 0
    faults: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    #: Jobs missing or not in a final state.
    lost: int = 0
    #: Pairs of executions of one job that overlapped without a lease rescue in between,
    #: or that carried the same attempt number or lease token.
    duplicated: int = 0
    #: Completed jobs whose outcome does not belong to exactly one finished execution of the final lease.
    double_completions: int = 0
    #: Jobs that ran (or were claimed) more often than allowed.
    over_attempts: int = 0
    #: Executions that started before the ``run_at`` they were claimed with.
    early_starts: int = 0
    #: Executions cut short by an outage (``outages``) whose job ran again, and the slowest recovery.
    recoveries: int = 0
    max_recovery_s: float | None = None
    violations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def assert_ok(self) -> None:
        if self.violations:
            shown = "\n  ".join(self.violations[:30])
            more = f"\n  ... and {len(self.violations) - 30} more" if len(self.violations) > 30 else ""
            raise AssertionError(f"{self.scenario}: {len(self.violations)} invariant violation(s):\n  {shown}{more}")

    @classmethod
    def merged(cls, reports: Iterable[Report], scenario: str | None = None, **overrides: Any) -> Report:
        """Sum of several reports (e.g. one per batch) as one scenario."""
        total = cls(scenario or _current_test())
        for r in reports:
            for name in ("jobs", "executions", "lost", "duplicated", "double_completions", "over_attempts"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            total.early_starts += r.early_starts
            total.recoveries += r.recoveries
            total.workers = max(total.workers, r.workers)
            total.faults += r.faults
            for status, n in r.statuses.items():
                total.statuses[status] = total.statuses.get(status, 0) + n
            if r.max_recovery_s is not None:
                total.max_recovery_s = max(total.max_recovery_s or 0.0, r.max_recovery_s)
            total.violations += r.violations
        for name, value in overrides.items():
            setattr(total, name, value)
        return total


def _current_test() -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "scenario")
    return current.rsplit(" (", 1)[0].rsplit("/", 1)[-1]


def save_report(report: Report) -> None:
    """Append ``report`` as one JSON line to ``$MJQ_RELIABILITY_REPORT``, if set."""
    path = os.environ.get("MJQ_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(report.as_dict(), default=str) + "\n")


def check_invariants(
    db: Database[Any],
    jobs: Collection[Any] | str = "jobs",
    *,
    expected_jobs: int | Iterable[ObjectId],
    max_attempts: int | None = None,
    job_filter: Mapping[str, Any] | None = None,
    final_statuses: Iterable[str] = FINAL,
    outages: Mapping[int, datetime] | None = None,
    clock_tolerance_ms: int = 50,
    executions: str = "executions",
    scenario: str | None = None,
    workers: int = 0,
    faults: int = 0,
    extra: Mapping[str, Any] | None = None,
    save: bool = True,
    raise_on_violation: bool = True,
) -> Report:
    """Check the queue's promises against the job documents and the recorded executions.

    Jobs are the documents of ``jobs`` matching ``job_filter``; executions are
    those of ``executions`` whose ``job_id`` is one of them.

    Invariants, each counted in the returned :class:`Report`:

    1. **Nothing lost.** ``expected_jobs`` (a count, or the ids) jobs exist and
       every one is in ``final_statuses`` (completed or failed): none is left
       pending or processing.
    2. **No concurrent double run unless a lease expired first.** Executions
       ``e1`` and ``e2`` of one job, ``e1`` started first, *overlap* when
       ``e1`` has no ``end`` (it died, or is still running) or ended after
       ``e2`` started. An overlap is *explained* only if ``e2.attempt >
       e1.attempt`` and the job's error history holds a ``LeaseExpired`` record
       for ``e1``'s lease token dated no later than ``e2.start``: ``e1``'s
       lease was rescued by a sweep, which requires it to have expired, before
       ``e2`` was claimed. Every unexplained overlap, and every two executions
       sharing an attempt number or a lease token, counts as ``duplicated``.
       (The history keeps ``max_error_history`` records: configure it above
       the attempts a scenario can make, or old rescues cannot be verified.)
    3. **One recorded completion.** A completed job has exactly one execution
       with the job's final ``lease_token``; it ended by returning, its
       attempt equals the job's ``attempts`` and its return value is the
       job's ``result``. A failed job's last error belongs to its last lease.
       Otherwise ``double_completions``.
    4. **No early start.** No execution started before the ``run_at`` it was
       claimed with: delayed and retried jobs wait their turn. Times come
       from different processes, each correcting its clock by its own
       measurement of the server's (off by up to half a round trip, which
       grows on a loaded machine), so comparisons of times from different
       processes allow ``clock_tolerance_ms`` (50 ms; raise it for
       skewed-clock scenarios). Delays in the scenarios are far larger.
    5. **Bounded attempts.** No job was claimed (``attempts``) or executed
       more than ``max_attempts`` times (default: its ``max_retries + 1``).

    ``outages`` (pid -> when that worker was killed or frozen, e.g.
    ``fleet.outages``) adds recovery times: for each execution of such a pid
    that was running at the outage, the delay from the outage to the start
    of the job's next execution. ``report.max_recovery_s`` is the largest.

    Returns the report after appending it to ``$MJQ_RELIABILITY_REPORT``
    (``save``); raises ``AssertionError`` listing the violations unless
    ``raise_on_violation`` is false.
    """
    jobs_coll = db[jobs] if isinstance(jobs, str) else jobs
    report = Report(scenario or _current_test(), workers=workers, faults=faults, extra=dict(extra or {}))
    tolerance = timedelta(milliseconds=clock_tolerance_ms)
    final = tuple(final_statuses)
    docs = {d["_id"]: d for d in jobs_coll.find(dict(job_filter or {}))}
    report.jobs = len(docs)
    by_job: dict[ObjectId, list[dict[str, Any]]] = {job_id: [] for job_id in docs}
    for e in db[executions].find({"job_id": {"$in": list(docs)}}):
        by_job[e["job_id"]].append(e)
    report.executions = sum(len(v) for v in by_job.values())

    def violation(kind: str, message: str) -> None:
        setattr(report, kind, getattr(report, kind) + 1)
        report.violations.append(f"[{kind}] {message}")

    # 1. nothing lost
    if isinstance(expected_jobs, int):
        if len(docs) < expected_jobs:
            violation("lost", f"{expected_jobs - len(docs)} of {expected_jobs} expected jobs are missing")
        elif len(docs) > expected_jobs:
            report.violations.append(f"[extra] {len(docs)} jobs found, {expected_jobs} expected")
    else:
        for job_id in expected_jobs:
            if job_id not in docs:
                violation("lost", f"job {job_id} is missing")
    for job_id, doc in docs.items():
        status = doc.get("status")
        report.statuses[status] = report.statuses.get(status, 0) + 1
        if status not in final:
            violation("lost", f"job {job_id} ({doc.get('type')}) left {status} after {doc.get('attempts')} attempt(s)")

    for job_id, doc in docs.items():
        execs = sorted(by_job[job_id], key=lambda e: (e["start"], e["attempt"]))
        rescued = {
            err.get("lease_token"): err.get("at")
            for err in doc.get("errors") or []
            if err.get("type") == LEASE_EXPIRED and err.get("lease_token")
        }
        # 2. overlaps and duplicate claims
        for kind_key in ("attempt", "token"):
            seen: dict[Any, dict[str, Any]] = {}
            for e in execs:
                if e[kind_key] in seen:
                    violation(
                        "duplicated",
                        f"job {job_id}: two executions with {kind_key} {e[kind_key]!r} "
                        f"(workers {seen[e[kind_key]]['worker_id']} and {e['worker_id']})",
                    )
                seen[e[kind_key]] = e
        for i, e1 in enumerate(execs):
            for e2 in execs[i + 1 :]:
                if e1["end"] is not None and e1["end"] <= e2["start"]:
                    continue
                rescue_at = rescued.get(e1["token"])
                if e2["attempt"] > e1["attempt"] and rescue_at is not None and rescue_at <= e2["start"] + tolerance:
                    continue
                ended = "never ended" if e1["end"] is None else f"ended {e1['end']:%H:%M:%S.%f}"
                violation(
                    "duplicated",
                    f"job {job_id}: attempt {e1['attempt']} on {e1['worker_id']} (started "
                    f"{e1['start']:%H:%M:%S.%f}, {ended}) overlaps attempt {e2['attempt']} on "
                    f"{e2['worker_id']} (started {e2['start']:%H:%M:%S.%f}) without a lease rescue "
                    f"before it (rescue record: {rescue_at})",
                )
        # 3. exactly one recorded outcome, from the final lease
        status = doc.get("status")
        if status == "completed":
            token = doc.get("lease_token")
            final_execs = [e for e in execs if token is not None and e["token"] == token]
            if len(final_execs) != 1:
                violation(
                    "double_completions",
                    f"job {job_id}: completed with lease {token!r} but {len(final_execs)} execution(s) hold it",
                )
            else:
                e = final_execs[0]
                problems = []
                if e["outcome"] != "returned" or e["end"] is None:
                    problems.append(f"that execution's outcome is {e['outcome']!r}")
                if e["attempt"] != doc.get("attempts"):
                    problems.append(f"its attempt {e['attempt']} != job attempts {doc.get('attempts')}")
                if e.get("result") != doc.get("result"):
                    problems.append(f"job result {doc.get('result')!r} != that execution's {e.get('result')!r}")
                if problems:
                    violation("double_completions", f"job {job_id}: " + "; ".join(problems))
        elif status == "failed":
            last = doc.get("last_error") or {}
            if not last:
                violation("double_completions", f"job {job_id}: failed without a last_error")
            elif last.get("type") != LEASE_EXPIRED:
                owners = [e for e in execs if e["token"] == last.get("lease_token")]
                if doc.get("lease_token") != last.get("lease_token") or len(owners) > 1:
                    violation("double_completions", f"job {job_id}: failure not recorded by its last lease")
                elif owners and owners[0]["attempt"] != doc.get("attempts"):
                    violation("double_completions", f"job {job_id}: failure recorded by a stale attempt")
        # 4. no early start
        for e in execs:
            if e.get("run_at") is not None and e["start"] + tolerance < e["run_at"]:
                violation(
                    "early_starts",
                    f"job {job_id}: attempt {e['attempt']} started {e['start']:%H:%M:%S.%f}, "
                    f"before its run_at {e['run_at']:%H:%M:%S.%f}",
                )
        # 5. bounded attempts
        limit = max_attempts if max_attempts is not None else int(doc.get("max_retries", 0)) + 1
        if int(doc.get("attempts") or 0) > limit or len(execs) > limit:
            violation(
                "over_attempts",
                f"job {job_id}: {doc.get('attempts')} attempt(s), {len(execs)} execution(s), limit {limit}",
            )
        for e in execs:
            if e["attempt"] > int(doc.get("attempts") or 0):
                violation("over_attempts", f"job {job_id}: execution of attempt {e['attempt']} > job attempts")

    # Recovery: from the outage of a pid to the next start of each job it was running.
    for pid, at in (outages or {}).items():
        for execs in by_job.values():
            for e in execs:
                running = e["start"] <= at + tolerance and (e["end"] is None or e["end"] + tolerance >= at)
                if e["pid"] != pid or not running:
                    continue
                later = [x["start"] for x in execs if x["start"] > at and x["attempt"] > e["attempt"]]
                if later:
                    seconds = (min(later) - at).total_seconds()
                    report.recoveries += 1
                    report.max_recovery_s = max(report.max_recovery_s or 0.0, seconds)

    if save:
        save_report(report)
    if raise_on_violation:
        report.assert_ok()
    return report
