"""Database faults under a busy worker pool, checked against the fleet invariants.

``configureFailPoint``/``failCommand`` injects each fault on the queue's own
connection (selected by its appName, so the test's and the recorder's
clients are untouched) while a pool of four handler threads works through
several jobs, on each command the queue relies on:

* the claim (``findAndModify``, or ``update`` when it claims several jobs at once);
* the heartbeat (``update``, armed while every job is mid-run);
* the completion (``update``, armed just before the jobs finish);
* the retry reschedule (``update``, armed while first attempts are failing).

Faults: a dropped connection, "not writable primary" (10107), "primary
stepped down" (189), a ``writeConcernError`` (the write applied, its reply
says otherwise), and a reply blocked longer than the driver's socket
timeout (a connection with ``socketTimeoutMS=500``). Each fault is switched
on (``alwaysOn``) just before the step, until a command of that step has
met it, and for 200 ms more: a short outage that every retry layer sees,
well inside the queue's retry budget. A command listener on the queue's
client proves which steps met the fault, whatever commands the store uses
for them. Pass: the fault hit the step, nothing is lost or run twice
concurrently (:func:`check_invariants`), no job ran twice at all (except
after a blocked claim, whose late-applied twin is an orphan until its lease
expires), and the pool keeps working after the fault clears. ``tests/integration/test_faults.py`` covers
the same faults one job at a time; this is the version under load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import mongoengine
import pytest
from helpers import wait_until
from pymongo import MongoClient, monitoring
from pymongo.errors import NetworkTimeout, OperationFailure

from mongo_job_queue import BaseJob, create_job_queue

from .harness import behaviour_handler, check_invariants, running_executions

pytestmark = pytest.mark.integration

FAULT_ALIAS, FAULT_APP_NAME = "mjq_reliability_faults", "mjq-reliability-faults"
SHORT_ALIAS, SHORT_APP_NAME = "mjq_reliability_short_timeout", "mjq-reliability-short-timeout"
SOCKET_TIMEOUT_MS = 500
BLOCK_MS = 1_000
#: How long the fault stays on after the first command of the step met it.
LINGER_S = 0.2
JOBS = 8
CONCURRENCY = 4


class FaultJob(BaseJob):
    """The jobs collection, through the queue-under-test's own connection."""

    meta = {"collection": "jobs", "db_alias": FAULT_ALIAS}


class ShortTimeoutJob(BaseJob):
    """The jobs collection again, through a connection with a short socket timeout."""

    meta = {"collection": "jobs", "db_alias": SHORT_ALIAS}


FAULTS: dict[str, dict[str, Any]] = {
    "closeConnection": {"closeConnection": True},
    "notWritablePrimary-10107": {"errorCode": 10107},
    "primarySteppedDown-189": {"errorCode": 189},
    "writeConcernError": {"writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}},
    "blockConnection": {"blockConnection": True, "blockTimeMS": BLOCK_MS},
}
#: Commands to fail for each step. A claim is one findAndModify, or (several jobs at once) a find and an update.
STEPS = {
    "claim": ["findAndModify", "update"],
    "heartbeat": ["update"],
    "completion": ["update"],
    "reschedule": ["update"],
}


def step_of(command_name: str, command: dict[str, Any]) -> str:
    """Which queue step a findAndModify/update command performs, from what it writes."""
    if command_name == "findAndModify":
        return "claim"
    if command_name != "update" or not command.get("updates"):
        return command_name
    statement = command["updates"][0]
    change = statement.get("u") or {}
    status = (change.get("$set") or {}).get("status") if isinstance(change, dict) else None
    if status is None:
        return "heartbeat" if "lease_expires_at" in (change.get("$max") or {}) else "update"  # a renewal
    if status == "processing":
        return "claim"
    if status == "completed":
        return "completion"
    if status == "pending" and "$push" in change:
        return "rescue" if "lease_expires_at" in statement.get("q", {}) else "reschedule"
    return {"pending": "release", "failed": "fail"}.get(status, "update")


class FaultHits(monitoring.CommandListener):
    """Counts, per queue step, the commands that failed or came back with a writeConcernError."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[tuple[Any, int], str] = {}
        self.hits: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self._started[(event.connection_id, event.request_id)] = step_of(event.command_name, event.command)

    def _hit(self, event: Any) -> None:
        with self._lock:
            step = self._started.pop((event.connection_id, event.request_id), event.command_name)
            self.hits[step] = self.hits.get(step, 0) + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if "writeConcernError" in event.reply:
            self._hit(event)
        else:
            with self._lock:
                self._started.pop((event.connection_id, event.request_id), None)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._hit(event)

    def count(self, step: str) -> int:
        with self._lock:
            return self.hits.get(step, 0)


@pytest.fixture
def failpoint(raw_db) -> Iterator[Any]:
    admin = raw_db.client.admin

    def switch(app_name: str | None, commands: list[str] | None = None, **data: Any) -> None:
        if app_name is None:
            admin.command("configureFailPoint", "failCommand", mode="off")
        else:
            data = {"failCommands": commands, "appName": app_name, **data}
            admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data=data)

    try:
        switch(None)
    except OperationFailure as exc:  # a mongod without enableTestCommands
        pytest.skip(f"server has no failCommand failpoint: {exc}")
    yield switch
    switch(None)


@pytest.fixture
def queue_connection(mongodb_uri: str, db_name: str, job_model) -> Iterator[Any]:
    """``connect(fault)`` -> (job model, app name, listener) of a fresh connection for the queue under test."""
    aliases: list[str] = []

    def connect(fault: str) -> tuple[type[BaseJob], str, FaultHits]:
        blocking = fault == "blockConnection"
        model, alias, app_name = (
            (ShortTimeoutJob, SHORT_ALIAS, SHORT_APP_NAME) if blocking else (FaultJob, FAULT_ALIAS, FAULT_APP_NAME)
        )
        hits = FaultHits()
        options: dict[str, Any] = {"socketTimeoutMS": SOCKET_TIMEOUT_MS} if blocking else {}
        mongoengine.connect(
            db=db_name,
            host=mongodb_uri,
            alias=alias,
            uuidRepresentation="standard",
            appname=app_name,
            heartbeatFrequencyMS=500,
            event_listeners=[hits],
            **options,
        )
        aliases.append(alias)
        return model, app_name, hits

    yield connect
    for alias in aliases:
        mongoengine.disconnect(alias=alias)


def test_server_honours_block_connection_failpoint(failpoint, mongodb_uri: str) -> None:
    """The blockConnection scenarios are only meaningful if the server really holds the reply back."""
    with MongoClient(mongodb_uri, appname="block-probe", socketTimeoutMS=SOCKET_TIMEOUT_MS) as client:
        client.admin.command("ping")
        failpoint("block-probe", ["ping"], blockConnection=True, blockTimeMS=BLOCK_MS)
        started = time.monotonic()
        with pytest.raises(NetworkTimeout):
            client.admin.command("ping")
        assert time.monotonic() - started < BLOCK_MS / 1000, "the driver's socket timeout cut the wait short"
        failpoint(None)
    with MongoClient(mongodb_uri, appname="block-probe") as client:
        client.admin.command("ping")
        failpoint("block-probe", ["ping"], blockConnection=True, blockTimeMS=BLOCK_MS)
        started = time.monotonic()
        client.admin.command("ping")
        blocked = time.monotonic() - started
    assert blocked >= 0.9 * BLOCK_MS / 1000, f"server ignored blockConnection: ping answered in {blocked:.3f}s"


def _config(step: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "concurrency": CONCURRENCY,
        "poll_interval_base_ms": 20,
        "poll_interval_max_ms": 100,
        "retry_delay_ms": 50,
        "sweep_interval_ms": 300,
        "max_error_history": 50,
        "lease_ms": 3_000,
    }
    # Frequent beats for the heartbeat step; rare ones otherwise, so that the
    # writes in the fault window are the completions or the reschedules.
    config["heartbeat_interval_ms"] = 250 if step == "heartbeat" else 1_500
    return config


def _job_data(step: str) -> dict[str, Any]:
    if step == "heartbeat":
        return {"sleep_ms": 1_500}
    if step == "reschedule":
        return {"sleep_ms": 300, "raise": "first attempt fails", "raise_attempts": 1}
    return {"sleep_ms": 300}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("step", list(STEPS))
def test_pool_survives_fault(step, fault, failpoint, queue_connection, make_queue, recorder, raw_db, caplog) -> None:
    caplog.set_level("WARNING")
    model, app_name, hits = queue_connection(fault)
    queue = create_job_queue(job_model=model, config=_config(step))
    queue.register_handler("WORK", behaviour_handler(recorder, queue.worker.owner.worker_id))
    producer = make_queue()
    producer.enqueue_many([{"job_type": "WORK", "data": _job_data(step)}] * JOBS)
    queue.ensure_indexes()
    try:
        if step == "claim":
            failpoint(app_name, STEPS[step], **FAULTS[fault])
            queue.start_polling()
        else:
            queue.start_polling()
            # Switch the fault on while a full pool of jobs is mid-run: the next writes are this step's.
            wait_until(lambda: len(running_executions(raw_db)) == CONCURRENCY, timeout=30, what="a busy pool")
            failpoint(app_name, STEPS[step], **FAULTS[fault])
        try:
            wait_until(lambda: hits.count(step), timeout=20, interval=0.01, what=f"the {step} to meet the fault")
            time.sleep(LINGER_S)  # keep the outage on a little while retries run into it
        finally:
            failpoint(None)
        wait_until(
            lambda: raw_db.jobs.count_documents({"status": "completed"}) == JOBS,
            timeout=60,
            interval=0.1,
            what="every job completed through the fault",
        )
        # The fault is over: the same pool takes new work.
        producer.enqueue_many([{"job_type": "WORK", "data": {"n": n}} for n in range(CONCURRENCY)])
        wait_until(
            lambda: raw_db.jobs.count_documents({"status": "completed"}) == JOBS + CONCURRENCY,
            timeout=30,
            what="jobs enqueued after the fault",
        )
    finally:
        assert queue.stop(timeout=30)
    report = check_invariants(
        raw_db,
        expected_jobs=JOBS + CONCURRENCY,
        workers=1,
        faults=sum(hits.hits.values()),
        final_statuses=["completed"],
        extra={"hits": hits.hits},
    )
    if step == "heartbeat":
        # A transient fault is retried within the beat, like every other write; not dropped as a failed beat.
        dropped = [repr(r.exc_info[1]) for r in caplog.records if r.exc_info and "renewal failed" in r.getMessage()]
        assert not dropped, f"heartbeat gave up on a transient fault instead of retrying it: {dropped[0]}"
    if step == "reschedule":
        for doc in raw_db.jobs.find({"data.raise_attempts": 1}):
            assert doc["attempts"] == 2, doc
            assert [e["type"] for e in doc["errors"]] == ["builtins.RuntimeError"], "one record per failed attempt"
    elif not (fault == "blockConnection" and step == "claim"):
        # A blocked claim may still apply on the server after the driver gave
        # up on it: that job is an orphan until its lease expires, then runs.
        assert report.executions == JOBS + CONCURRENCY, f"a job ran twice: {report.as_dict()}"
