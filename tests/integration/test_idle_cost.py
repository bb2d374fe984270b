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
from helpers import wait_until
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


def test_an_idle_default_worker_sends_at_most_4_commands_a_minute(counted: CommandLog) -> None:
    queue: Any = create_job_queue(job_model=IdleJob)
    queue.register_handler("T", lambda job: None)
    queue.start_polling()
    try:
        time.sleep(SETTLE_S)  # a measurement window, not a wait for a condition: the start-up's writes pass
        start = time.monotonic()
        time.sleep(WINDOW_S)
        end = time.monotonic()
        assert queue.worker.running
    finally:
        queue.stop(timeout=10)
    counts = counted.between(start, end)
    report = breakdown(counts, end - start)
    print(report)
    assert sum(counts.values()) <= MAX_PER_MINUTE * WINDOW_S / 60, report


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
