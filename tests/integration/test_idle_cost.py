"""What an idle worker of the default config costs the database, counted command by command.

The worker's own client carries a command listener; the test counts what
it sends over a window once the worker has settled, grouped by command
and collection, and prints the breakdown (``pytest -s`` shows it).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import mongoengine
import pytest
from helpers import holds_for, wait_until
from pymongo import monitoring

from mongo_job_queue import BaseJob, create_job_queue

pytestmark = pytest.mark.integration

IDLE_ALIAS = "mjq_idle_cost"
#: The goal of issue 16 where change streams work: at most 4 commands per minute per idle worker.
MAX_PER_MINUTE = 4
WINDOW_S = 60.0
SETTLE_S = 5.0


class IdleJob(BaseJob):
    meta = {"collection": "idle_jobs", "db_alias": IDLE_ALIAS}


class CommandLog(monitoring.CommandListener):
    """Every command the client sends, as ``(command, collection)``, with the time it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        if event.command_name == "getMore":
            target = event.command.get("collection")
        collection = target if isinstance(target, str) else ""
        status = (event.command.get("filter") or {}).get("status")
        if event.command_name == "find" and isinstance(status, str):
            collection += f" status={status}"  # a claim or due-time read (pending), a lease read (processing)
        with self.lock:
            self.sent.append((time.monotonic(), event.command_name, collection))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def between(self, start: float, end: float) -> Counter[tuple[str, str]]:
        with self.lock:
            return Counter((name, coll) for at, name, coll in self.sent if start <= at < end)


@pytest.fixture
def counted(mongodb_uri: str, db_name: str) -> Iterator[CommandLog]:
    log = CommandLog()
    mongoengine.connect(
        db=db_name, host=mongodb_uri, alias=IDLE_ALIAS, event_listeners=[log], uuidRepresentation="standard"
    )
    db = IdleJob._get_db()
    for name in db.list_collection_names():
        if name.startswith("idle_jobs"):
            db.drop_collection(name)
    yield log
    for name in db.list_collection_names():
        if name.startswith("idle_jobs"):
            db.drop_collection(name)
    mongoengine.disconnect(alias=IDLE_ALIAS)


def breakdown(counts: Counter[tuple[str, str]], window_s: float) -> str:
    lines = [f"{n * 60 / window_s:6.1f}/min  {name} {coll}" for (name, coll), n in counts.most_common()]
    return "\n".join([f"idle worker, {sum(counts.values())} commands in {window_s:.0f} s:", *lines])


def measure_idle(counted: CommandLog, config: dict[str, Any], settle_s: float, window_s: float) -> tuple[Any, str]:
    """What an idle worker of ``config`` sends in ``window_s`` after ``settle_s``: the counts and their report."""
    queue: Any = create_job_queue(job_model=IdleJob, config=config)
    queue.register_handler("T", lambda job: None)
    queue.start_polling()
    try:
        time.sleep(settle_s)  # a measurement window, not a wait for a condition: the start-up's writes pass
        start = time.monotonic()
        time.sleep(window_s)
        end = time.monotonic()
        assert queue.worker.running
    finally:
        queue.stop(timeout=10)
    counts = counted.between(start, end)
    report = breakdown(counts, end - start)
    print(report)
    return counts, report


def test_an_idle_default_worker_sends_at_most_4_commands_a_minute(counted: CommandLog) -> None:
    counts, report = measure_idle(counted, {}, SETTLE_S, WINDOW_S)
    assert sum(counts.values()) <= MAX_PER_MINUTE * WINDOW_S / 60, report


def test_without_a_change_stream_an_idle_worker_polls_once_per_poll_maximum(counted: CommandLog) -> None:
    # The example is 10 s; 5 s shows the same bound in half the time. The default backoff
    # (1, 2, 4 s) reaches it in 7 s.
    poll_max_s = 5.0
    config = {"change_stream_wakeups": False, "poll_interval_max_ms": int(poll_max_s * 1000)}
    window_s = 20.0
    counts, report = measure_idle(counted, config, 8.0, window_s)
    polls = window_s / poll_max_s + 1
    assert counts[("find", "idle_jobs status=pending")] <= polls, report  # the claims
    assert counts[("find", "idle_jobs_control")] <= polls, report  # the pause read before each
    assert not counts[("getMore", "$cmd.aggregate")] and not counts[("getMore", "idle_jobs")], report


def test_a_delayed_job_starts_within_100_ms_of_its_run_at_on_an_idle_default_worker(counted: CommandLog) -> None:
    queue: Any = create_job_queue(job_model=IdleJob)
    started: list[Any] = []
    queue.register_handler("T", lambda job: started.append(queue.store.now()))
    queue.start_polling()
    try:
        wait_until(lambda: queue.worker.poller._pause_watched, timeout=30, what="the worker idles on its stream")
        job = queue.enqueue("T", {}, delay_ms=1500)
        wait_until(lambda: queue.get_job(job.id).status == "completed", timeout=10, what="the delayed job ran")
    finally:
        queue.stop(timeout=10)
    stored = IdleJob.objects.get(id=job.id)
    late_ms = (stored.started_at - stored.run_at).total_seconds() * 1000
    print(f"delayed job: run_at {stored.run_at}, started {stored.started_at}: {late_ms:.0f} ms late")
    assert 0 <= late_ms <= 100, late_ms
    assert started and (started[0] - stored.run_at).total_seconds() * 1000 <= 100


def test_an_idle_worker_hears_of_a_pause_and_a_resume_made_elsewhere_through_its_stream(make_queue, job_model) -> None:
    # Nothing but the stream could tell it: no poll and no pause read for ten minutes.
    slow = {"poll_interval_base_ms": 600_000, "poll_interval_max_ms": 600_000, "pause_refresh_ms": 600_000}
    worker = make_queue(**slow)
    worker.register_handler("T", lambda job: None)
    worker.start_polling()
    wait_until(lambda: worker.worker.poller._pause_watched, timeout=30, what="the worker idles on its stream")
    admin = make_queue()  # another queue object: its pause and resume notify no worker of its own
    admin.pause(queues=["default"])
    job = admin.enqueue("T", {})
    holds_for(lambda: admin.get_job(job.id).status == "pending", 1.0, what="the paused job waits")
    admin.resume(queues=["default"])
    wait_until(lambda: admin.get_job(job.id).status == "completed", timeout=5, what="the resumed job runs")
