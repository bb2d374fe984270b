"""What Redis limit hints save: MongoDB commands of one contended workload, counted with and without them.

Two queues of two threads share a rate of 5/s (25 jobs) and a
``max_running=1`` key (25 jobs of 50 ms); each queue's client carries a
command listener, and the test counts what the claims send, by command
and target (``pytest -s`` prints the table that docs/limits.rst quotes).
Run twice each way, alternating, as contention varies from run to run.
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
from mongoengine import StringField
from pymongo import monitoring
from redis_support import forget, fresh_prefix, shared_client

from mongo_job_queue import BaseJob, create_job_queue

pytestmark = [pytest.mark.integration, pytest.mark.serial]

ALIAS = "mjq_hint_cost"
CONFIG = {
    "concurrency": 2,
    "poll_interval_base_ms": 20,
    "poll_interval_max_ms": 200,
    "lease_ms": 10_000,
    "heartbeat_interval_ms": 500,
    "sweep_interval_ms": 500,
}


class HintJob(BaseJob):
    organization = StringField()
    meta = {"collection": "hint_jobs", "db_alias": ALIAS}


class Commands(monitoring.CommandListener):
    """The commands sent while ``on``, by (command, target); limiter writes by their operators, and misses."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.on = False
        self._pending: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on:
            return
        target = event.command.get(event.command_name)
        what = f"{event.command_name} {target if isinstance(target, str) else ''}".strip()
        if event.command_name == "find" and what.endswith("_limiters"):
            what += " (busy limiters)" if "limit" in event.command["filter"] else " (one limiter)"
        elif event.command_name == "update":
            what += " " + ",".join(sorted(event.command["updates"][0]["u"]))
        with self.lock:
            self.sent[what] += 1
            self._pending[event.request_id] = what

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self.lock:
            what = self._pending.pop(event.request_id, None)
            if what is not None and what.startswith("update") and not event.reply.get("n"):
                self.sent[f"{what} (matched none)"] += 1

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self.lock:
            self._pending.pop(event.request_id, None)


@pytest.fixture
def counted(mongodb_uri: str, db_name: str) -> Iterator[Commands]:
    log = Commands()
    mongoengine.connect(db=db_name, host=mongodb_uri, alias=ALIAS, event_listeners=[log], uuidRepresentation="standard")
    yield log
    _drop()
    mongoengine.disconnect(alias=ALIAS)


def _drop() -> None:
    db = HintJob._get_db()
    for name in db.list_collection_names():
        if name.startswith("hint_jobs"):
            db.drop_collection(name)


def contended(counted: Commands, hints: Any) -> Counter[str]:
    """The commands the workload's claims sent, from the first start to the last job done."""
    _drop()
    counted.sent.clear()
    queues = [create_job_queue(job_model=HintJob, config=CONFIG) for _ in range(2)]
    queues[0].limit("api", job_types=["R"], key="organization", rate="5/s")
    queues[0].limit("solo", job_types=["S"], key="organization", max_running=1)
    done: list[str] = []
    lock = threading.Lock()

    def handle(job: Any) -> None:
        if job.type == "S":
            time.sleep(0.05)
        with lock:
            done.append(job.type)

    for queue in queues:
        if hints is not None:
            queue.add_limit_hints(hints)
        queue.register_handler("R", handle)
        queue.register_handler("S", handle)
    jobs = [{"job_type": t, "organization": "acme"} for t in ("R", "S") for _ in range(25)]
    queues[0].enqueue_many(jobs)
    counted.on = True
    try:
        for queue in queues:
            queue.start_polling()
        wait_until(lambda: len(done) >= 50, timeout=120, interval=0.05, what="the 50 jobs ran")
    finally:
        counted.on = False
        for queue in queues:
            queue.stop(timeout=10)
    return Counter(counted.sent)


def limiter_commands(sent: Counter[str]) -> int:
    return sum(n for what, n in sent.items() if "_limiters" in what and "(matched none)" not in what)


def test_hints_save_limiter_round_trips_under_contention(counted: Commands) -> None:
    from mongo_job_queue.contrib.redis import RedisLimitHints

    client = shared_client()
    prefix = fresh_prefix()
    runs: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    try:
        for hinted in (False, True, False, True):
            runs[hinted] += contended(counted, RedisLimitHints(client, prefix=prefix) if hinted else None)
    finally:
        forget(client, prefix)
    rows = sorted(set(runs[False]) | set(runs[True]), key=lambda what: -runs[False][what])
    print("\n  without   with hints  (two runs each, 50 starts a run)")
    for what in rows:
        if "_limiters" in what or what.startswith(("find hint_jobs", "update hint_jobs ")):
            print(f"  {runs[False][what]:7d}   {runs[True][what]:7d}     {what}")
    without, with_hints = limiter_commands(runs[False]), limiter_commands(runs[True])
    total = sum(runs[False].values()), sum(runs[True].values())
    print(f"  limiter commands {without} -> {with_hints} ({with_hints / without:.2f}); all {total[0]} -> {total[1]}")
    # A hint never adds a MongoDB round trip: at worst (no race won by a hint) the counts of no hints.
    assert with_hints <= without * 1.1
