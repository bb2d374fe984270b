"""Conformance: with a declared shard key, every query the library sends about a job carries it.

No sharded cluster runs here, so the test checks what ``mongos`` would route
by: the filters. Command monitoring captures every command sent to the jobs
collection through a whole lifecycle (enqueue, claim, heartbeat, complete,
fail and retry, cancel of a pending and of a running job, recovery of a job
whose worker died), and each filter is classified:

* about one job or a few (``_id`` in the filter): it must carry every key
  field, so it reaches the one shard owning the job;
* the claim (pending jobs of some queues): it must name ``queue``, the key's
  first field, so it reaches only the shards owning those queues;
* the documented scatters (docs/scaling.rst): maintenance sweeps, the
  backfill of key documents when a process prepares the collection, the
  change stream, and the one read by ``_id`` with which an admin process
  that never saw a job learns its key. Anything else fails the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import mongoengine
import pytest
from bson import ObjectId
from helpers import wait_until
from pymongo import MongoClient, monitoring

from mongo_job_queue import BaseJob, JobCancelled, create_job_queue
from mongo_job_queue.clock import utcnow

pytestmark = pytest.mark.integration

ALIAS = "mjq_shard_key"
COLLECTION = "sharded_jobs"
KEY = ("queue", "_id")


class ShardedJob(BaseJob):
    meta = {"collection": COLLECTION, "db_alias": ALIAS, "shard_key": ("queue", "id")}


class Capture(monitoring.CommandListener):
    """Every command sent to the jobs collection, as sent."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command.get(event.command_name) == COLLECTION:
            with self.lock:
                self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def capture(mongodb_uri: str, db_name: str, pytestconfig: pytest.Config) -> Iterator[Capture]:
    listener = Capture()
    tz = bool(pytestconfig.getoption("--tz-aware"))
    mongoengine.connect(
        db=db_name,
        host=mongodb_uri,
        alias=ALIAS,
        event_listeners=[listener],
        uuidRepresentation="standard",
        tz_aware=tz,
    )
    ShardedJob.drop_collection()
    listener.commands.clear()
    yield listener
    ShardedJob.drop_collection()
    mongoengine.disconnect(alias=ALIAS)


def filters(name: str, command: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """The filters (with the projection, where there is one) of one command."""
    if name == "find":
        return [(command.get("filter") or {}, command.get("projection"))]
    if name == "findAndModify":
        return [(command.get("query") or {}, command.get("fields"))]
    if name == "update":
        return [(u["q"], None) for u in command["updates"]]
    if name == "delete":
        return [(d["q"], None) for d in command["deletes"]]
    if name in ("count", "distinct"):
        return [(command.get("query") or {}, None)]
    if name == "aggregate":
        first = (command.get("pipeline") or [{}])[0]
        return [(first.get("$match", first), None)]
    return []


def acceptable_scatter(filt: Mapping[str, Any], projection: Mapping[str, Any] | None) -> str | None:
    """Why a filter without the key is fine, or None (see docs/scaling.rst)."""
    if "$changeStream" in filt:
        return "the change stream: opened on every shard, as a change stream on mongos always is"
    if filt.get("status") == "processing" and "lease_expires_at" in filt and "_id" not in filt:
        return "the expired-lease sweep: maintenance, a few per minute per worker"
    malformed = filt.get("status") in ("pending", "blocked") and "$or" in filt and "queue" not in filt
    if malformed or (isinstance(filt.get("status"), Mapping) and "$nin" in filt["status"]):
        return "the hygiene sweep for malformed documents: maintenance"
    if filt.get("status") == "blocked" and set(filt) <= {"status", "_id", "depends_on"}:
        return "blocked jobs (docs/workflows.rst): the probe, the dependents of ended jobs, the sweep"
    if filt in ({"unique_key": {"$exists": True}}, {"schedule": {"$exists": True}, "fire_time": {"$exists": True}}):
        return "the backfill of key documents: once per process, when it prepares the collection"
    if set(filt) == {"_id"} and projection is not None and set(projection) <= set(KEY):
        return "an admin process that never saw the job reads its key once, by _id"
    return None


def test_every_query_about_a_job_carries_the_declared_shard_key(capture: Capture, mongodb_uri, db_name) -> None:
    raw = MongoClient(mongodb_uri)  # the test's own reads and writes, outside the capture
    jobs = raw[db_name][COLLECTION]
    queue = create_job_queue(
        job_model=ShardedJob,
        config={
            "poll_interval_base_ms": 20,
            "poll_interval_max_ms": 200,
            "retry_delay_ms": 50,
            "lease_ms": 2_000,
            "heartbeat_interval_ms": 200,
            "sweep_interval_ms": 200,
            "concurrency": 2,
            "queues": ["alpha", "beta"],
        },
    )
    assert queue.store.shard_key.fields == KEY
    started = threading.Event()

    queue.register_handler("ok", lambda job: "done")

    def boom(job: ShardedJob) -> None:
        raise RuntimeError("boom")

    def slow(job: ShardedJob) -> None:
        started.set()
        wait_until(job.is_cancel_requested, timeout=20, what="the cancel request")
        raise JobCancelled("asked to")

    queue.register_handler("boom", boom)
    queue.register_handler("slow", slow)
    queue.register_handler("orphan", lambda job: "rescued")

    done = queue.enqueue("ok", {}, queue="alpha")
    failed = queue.enqueue("boom", {}, queue="alpha", max_retries=1)
    running = queue.enqueue("slow", {}, queue="beta")
    later = queue.enqueue("ok", {}, queue="beta", delay_ms=3_600_000)
    # A job whose worker died holding it: leased, by another client, long expired.
    orphan = queue.enqueue("orphan", {}, queue="alpha")
    past = utcnow() - timedelta(minutes=5)
    jobs.update_one(
        {"_id": orphan.id},
        {"$set": {"status": "processing", "lease_token": "dead", "lease_expires_at": past, "attempts": 1}},
    )
    assert queue.cancel_job(later.id)  # an admin cancel of a job this process never read
    # Unique jobs: guarded by key documents (docs/scaling.rst); the holder is read by its key.
    unique = queue.enqueue("ok", {}, queue="beta", unique_key="u1", delay_ms=3_600_000)
    assert queue.enqueue("ok", {}, queue="alpha", unique_key="u1").id == unique.id
    jobs.update_one({"_id": unique.id}, {"$set": {"status": "cancelled", "finished_at": past}})
    taken = queue.enqueue("ok", {}, queue="alpha", unique_key="u1")  # released: the holder's key $unset, by key
    assert taken.id != unique.id and "unique_key" not in jobs.find_one({"_id": unique.id})

    queue.start_polling()
    try:
        assert started.wait(20)
        wait_until(lambda: _beats(capture, running.id) >= 2, timeout=20, what="two heartbeats of the running job")
        assert queue.cancel_job(running.id)

        def finished() -> bool:
            statuses = {d["_id"]: d["status"] for d in jobs.find({"_id": {"$nin": [later.id, unique.id]}})}
            return statuses == {
                taken.id: "completed",
                done.id: "completed",
                failed.id: "failed",
                running.id: "cancelled",
                orphan.id: "completed",
            }

        wait_until(finished, timeout=30, what="every job to finish")
    finally:
        queue.stop(timeout=10)

    keys = {doc["_id"]: {"queue": doc["queue"], "_id": doc["_id"]} for doc in jobs.find()}
    raw.close()
    per_job = claims = 0
    scatters: dict[str, int] = {}
    with capture.lock:
        commands = list(capture.commands)
    for name, command in commands:
        if name == "insert":
            assert all(set(KEY) <= set(doc) for doc in command["documents"])
            continue
        for filt, projection in filters(name, command):
            if "_id" in filt and not (isinstance(filt["_id"], Mapping) and "$in" not in filt["_id"]):
                reason = acceptable_scatter(filt, projection)
                if reason:
                    scatters[reason] = scatters.get(reason, 0) + 1
                    continue
                assert all(field in filt for field in KEY), f"{name} without the shard key: {filt}"
                ids = filt["_id"]["$in"] if isinstance(filt["_id"], Mapping) else [filt["_id"]]
                expected = {keys[i]["queue"] for i in ids}
                got = filt["queue"]["$in"] if isinstance(filt["queue"], Mapping) else [filt["queue"]]
                assert set(got) == expected, f"{name} names the wrong queue: {filt}"
                per_job += 1
            elif filt.get("status") == "pending" and "queue" in filt:
                claims += 1
            else:
                reason = acceptable_scatter(filt, projection)
                assert reason, f"{name} scatters to every shard, and is not a documented scatter: {filt}"
                scatters[reason] = scatters.get(reason, 0) + 1
    assert claims >= 4 and per_job >= 8
    written = [f for n, c in commands for f, _ in filters(n, c) if n in ("update", "findAndModify")]
    keyed = ((running.id, "heartbeat"), (orphan.id, "recovery"), (later.id, "admin cancel"), (unique.id, "release"))
    for job_id, what in keyed:
        assert any(f.get("_id") == job_id and f.get("queue") for f in written), f"no keyed {what} write seen"
    assert any(f.get("_id") == orphan.id and f.get("lease_token") == "dead" and f.get("queue") for f in written)
    assert "the expired-lease sweep: maintenance, a few per minute per worker" in scatters


def _beats(capture: Capture, job_id: ObjectId) -> int:
    with capture.lock:
        return sum(
            1
            for name, command in capture.commands
            if name == "update"
            for u in command["updates"]
            if u["q"].get("_id") == job_id and "lease_expires_at" in (u["u"].get("$max") or {})  # a renewal
        )
