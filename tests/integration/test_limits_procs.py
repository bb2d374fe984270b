"""Limits across worker processes: mutex keys, a per-organization cap through SIGKILL, a shared rate.

Each worker process (:mod:`integration.limits_proc`) numbers every run's
start and end from one ``$inc`` counter in MongoDB, so the check of "never
two at once" is exact: replaying the events in sequence order, the number
of runs of a key that started and have not ended never exceeds its cap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from pymongo.errors import PyMongoError

TESTS = Path(__file__).resolve().parent.parent
#: The overlapping runs :func:`_peaks` saw, for the failure message.
OVERLAPS: list[Any] = []
#: The runs fenced out after their lease lapsed: not counted as in flight (they held no live lease).
LAPSES: list[Any] = []


@pytest.fixture
def workers(mongodb_uri: str, db_name: str, raw_db: Any) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start limit worker processes; all are killed at teardown."""
    raw_db.drop_collection("limit_log")
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}

    def start(concurrency: int, offset_s: float = 0.0) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "integration.limits_proc", mongodb_uri, db_name, str(concurrency), str(offset_s)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def _completed(raw_db: Any, n: int) -> bool:
    """Whether ``n`` jobs completed; a read that times out on the busy server is just "not yet"."""
    try:
        return bool(raw_db.jobs.count_documents({"status": "completed"}) >= n)
    except PyMongoError:
        return False


def _ready(raw_db: Any, n: int) -> None:
    wait_until(lambda: raw_db.jobs_workers.count_documents({}) >= n, timeout=60, what=f"{n} workers registered")


def _events(raw_db: Any) -> list[dict[str, Any]]:
    """Every event, in the one order of the log document's array."""
    log = raw_db.limit_log.find_one({"_id": "log"}) or {}
    return list(log.get("events") or [])


def _mark(raw_db: Any, kind: str, pid: int) -> int:
    """Append a test event (a kill, the end of a window); its position in the log."""
    raw_db.limit_log.update_one({"_id": "log"}, {"$push": {"events": {"kind": kind, "pid": pid}}}, upsert=True)
    return len(_events(raw_db)) - 1


def _starts(raw_db: Any, pid: int | None = None) -> int:
    return sum(1 for e in _events(raw_db) if e["kind"] == "start" and (pid is None or e["pid"] == pid))


def _peaks(raw_db: Any, field: str) -> dict[Any, int]:
    """The most runs of one ``field`` value in flight at once, replaying the events in sequence order.

    A run of a killed process that never ended is over at its ``killed`` event.
    A run whose outcome was fenced out (a ``lost`` event: its lease lapsed
    under load, so it held no live lease) is the documented at-least-once
    path, not counted; any other overlap is a double admission.
    """
    events = _events(raw_db)
    lost = {(e["job"], e["token"]) for e in events if e["kind"] == "lost"}
    running: Counter[Any] = Counter()
    peaks: Counter[Any] = Counter()
    open_runs: dict[tuple[Any, Any], tuple[Any, int]] = {}
    for event in events:
        if event["kind"] == "lost":
            continue
        if event["kind"] == "killed":
            for run, (value, pid) in list(open_runs.items()):
                if pid == event["pid"]:
                    running[value] -= 1
                    del open_runs[run]
            continue
        value = event[field]
        run = (event["job"], event["token"])
        if run in lost:  # fenced out: its lease lapsed (at-least-once), it held no live lease
            if event["kind"] == "start":
                LAPSES.append((str(run[0]), str(run[1])[:8], event["pid"]))
            continue
        if event["kind"] == "start":
            running[value] += 1
            peaks[value] = max(peaks[value], running[value])
            if running[value] > 1:  # say which runs overlapped (the same job twice: a lapsed lease)
                OVERLAPS.append(
                    [(str(r[0]), r[1][:8], pid) for r, (v, pid) in open_runs.items() if v == value]
                    + [(str(run[0]), str(run[1])[:8], event["pid"])]
                )
            open_runs[run] = (value, event["pid"])
        elif run in open_runs:
            running[value] -= 1
            del open_runs[run]
    return dict(peaks)


def test_mutex_keys_never_run_twice_at_once_across_three_processes(workers, make_queue, raw_db) -> None:
    for _ in range(3):
        workers(8)
    _ready(raw_db, 3)
    queue = make_queue(lease_ms=10_000)  # a producer's calls under the load of 24 threads
    for chunk in range(3):  # 150 jobs: about 1 limited start/s is all this loaded 2-core box gives
        queue.enqueue_many(
            {"job_type": "LIM", "data": {"sleep_ms": 5}, "mutex_key": f"invoice:{n % 10}"}
            for n in range(chunk * 50, chunk * 50 + 50)
        )
    wait_until(lambda: _completed(raw_db, 150), timeout=270, interval=0.5, what="150 jobs completed")
    peaks = _peaks(raw_db, "mutex")
    assert len(peaks) == 10 and max(peaks.values()) == 1, (peaks, OVERLAPS, LAPSES)
    # Waiting for a key uses no attempt: a job starts again only after its lease lapsed
    # on this loaded server and its run was fenced out (then it is rescued and rerun).
    assert 150 <= _starts(raw_db) <= 150 + len(LAPSES), LAPSES


def test_a_cap_per_organization_holds_across_a_sigkill(workers, make_queue, raw_db) -> None:
    queue = make_queue(lease_ms=10_000)  # a producer's calls under the load of the workers
    queue.limit("per-org", key="organization", max_running=2)
    orgs = [f"org{n}" for n in range(6)]
    # The victim fills both slots of org0 and org1 with runs it never ends: its holders
    # must expire with its leases, or those two organizations never run again.
    held = {"job_type": "LIM", "data": {"sleep_ms": 60_000, "slow_attempts": 1}, "priority": 10, "max_retries": 5}
    queue.enqueue_many([{**held, "organization": org} for org in ("org0", "org0", "org1", "org1")])
    victim = workers(4)
    wait_until(lambda: _starts(raw_db, victim.pid) >= 4, timeout=60, interval=0.2, what="the victim holds 4 slots")
    queue.enqueue_many(
        {"job_type": "LIM", "data": {"sleep_ms": 300}, "organization": orgs[n % 6], "max_retries": 5} for n in range(68)
    )
    workers(4)
    workers(4)
    _ready(raw_db, 3)
    victim.kill()
    victim.wait(10)
    _mark(raw_db, "killed", victim.pid)
    wait_until(lambda: _completed(raw_db, 72), timeout=240, interval=0.5, what="72 jobs completed")
    peaks = _peaks(raw_db, "org")
    assert set(peaks) == set(orgs)
    assert max(peaks.values()) == 2, peaks  # the cap is reached, never passed
    # The killed worker's holders expired with its leases: nothing is left held.
    assert all(row["running"] == 0 for row in queue.limits()["keys"])


def _counted(raw_db: Any) -> dict[str, Any]:
    """The rate test's count of starts (``integration.limits_proc.count``): its total, and by process."""
    return raw_db.limit_log.find_one({"_id": "starts"}) or {"total": 0, "by_pid": {}}


def _cpu_pressure() -> str:
    """How much of the last 10 s runnable tasks waited for a CPU (Linux PSI), for a failure's message."""
    try:
        with open("/proc/pressure/cpu") as psi:
            return "cpu pressure " + psi.readline().split()[1]
    except (OSError, IndexError):
        return "cpu pressure unknown"


class _Feeder:
    """Keeps about ``depth`` jobs pending and deletes the completed ones, so every read of the claim scans few.

    The embedded server scans a collection to answer a read: with some 400
    pending jobs a claim's candidate read cost 28-60 ms. The starts are
    counted in their own document, so deleting a finished job loses nothing;
    the jobs pending are those enqueued less those started (one read by
    ``_id``), so the feeder's own reads do not scan the collection either.
    """

    def __init__(self, queue: Any, raw_db: Any, depth: int) -> None:
        self.queue, self.raw_db, self.depth = queue, raw_db, depth
        self.enqueued = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> _Feeder:
        self._top_up()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _top_up(self) -> None:
        missing = self.depth - (self.enqueued - _counted(self.raw_db)["total"])
        if missing > 0:
            self.queue.enqueue_many({"job_type": "LIM", "data": {"count_only": True}} for _ in range(missing))
            self.enqueued += missing

    def _run(self) -> None:
        # A pace, not a synchronisation: 10 starts of the rate between looks. Each insert wakes every idle
        # poller (their change streams), so the jobs are added in few batches.
        while not self._stop.wait(0.5):
            try:
                self._top_up()
                self.raw_db.jobs.delete_many({"status": "completed"})
            except PyMongoError as exc:  # a slow reply of the busy server: look again at the next turn
                self.errors.append(repr(exc))


# Serial: its bounds are 10% of the rate, and the embedded server (one Python process) needs most of a core
# for 20 limited starts/s (docs/limits.rst has the figures); a second test process would share it.
@pytest.mark.serial
def test_a_rate_shared_by_three_processes_one_with_a_skewed_clock(workers, make_queue, raw_db) -> None:
    workers(4)
    workers(4)
    skewed = workers(4, 300.0)  # five minutes ahead: it must not spend more
    _ready(raw_db, 3)
    queue = make_queue(lease_ms=10_000)  # a producer's calls under the load of 12 threads
    queue.limit("api", job_types=["LIM"], rate="20/s")
    with _Feeder(queue, raw_db, 60) as feeder:
        wait_until(lambda: _counted(raw_db)["total"] >= 20, timeout=60, what="a second of starts")
        # The window is the time between two reads of the count: a start counts in it when its
        # $inc landed between them, in the server's one order of writes to that document.
        opened = time.monotonic()
        first = _counted(raw_db)
        began = time.monotonic()
        time.sleep(10.0)  # the measured window itself, not a synchronisation
        ending = time.monotonic()
        last = _counted(raw_db)
        closed = time.monotonic()
    starts = last["total"] - first["total"]
    by_pid = {int(pid): n - first["by_pid"].get(pid, 0) for pid, n in last["by_pid"].items()}
    window = f"window {ending - began:.2f}-{closed - opened:.2f} s"
    seen = (starts, by_pid, window, _cpu_pressure(), feeder.errors[:3])
    # The bounds: 10 s at 20/s is 200 starts, and burst 1 gives one more; 20 either way for the
    # starts admitted before the window opened whose $inc landed in it (and the same at its end).
    # The upper bound is the guarantee, asserted whatever the machine's load. The lower bound is the
    # embedded server's CPU: a limited start costs that one Python process 40-45 ms, so 20/s needs
    # 80-90% of a core, which the shared 2-core machine does not always leave it (155-194 starts at a
    # CPU pressure of 60-85%, 167 at 29% on 2026-12-04; docs/limits.rst, the rate a limited queue reaches).
    assert starts <= 220, seen
    # Every worker starts jobs: a clock left uncorrected five minutes ahead would move the rate's state
    # five minutes ahead at its first start, and no other worker would start again. (The shares are
    # uneven: which poller wins the claim of a reserved start is a race.)
    assert len(by_pid) == 3 and min(by_pid.values()) >= starts // 10, (seen, skewed.pid)
    if starts < 180:
        pytest.xfail(f"under-spent, bounded by the embedded server's CPU on this machine: {seen}")
