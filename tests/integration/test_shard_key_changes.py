"""The app changes a job's shard key value: the job still runs once, and admin calls by id still find it.

MongoDB lets an app update a document's shard key value (since 4.2). A
running job's fenced writes carry the values read at the claim, so after
such a change they match nothing; the worker then reads the job by ``_id``
(one scatter) and, while it still holds the lease, adopts the new values.
Nothing remembers a job's values across calls, so an admin call by id reads
them afresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import mongoengine
import pytest
from helpers import wait_until
from mongoengine import StringField

from mongo_job_queue import BaseJob, create_job_queue
from mongo_job_queue.model import JobError
from mongo_job_queue.store.shardkey import ShardKey

pytestmark = pytest.mark.integration

ALIAS = "mjq_shard_key_changes"


class TenantJob(BaseJob):
    organization = StringField()
    meta = {"collection": "tenant_jobs", "db_alias": ALIAS, "shard_key": ("organization", "id")}


@pytest.fixture
def model(mongodb_uri: str, db_name: str, pytestconfig: pytest.Config) -> Iterator[type[TenantJob]]:
    tz = bool(pytestconfig.getoption("--tz-aware"))
    mongoengine.connect(db=db_name, host=mongodb_uri, alias=ALIAS, uuidRepresentation="standard", tz_aware=tz)
    TenantJob.drop_collection()
    yield TenantJob
    TenantJob.drop_collection()
    mongoengine.disconnect(alias=ALIAS)


FAST = {
    "lease_ms": 2_000,
    "heartbeat_interval_ms": 200,
    "sweep_interval_ms": 200,
    "poll_interval_base_ms": 20,
    "poll_interval_max_ms": 200,
}


@pytest.mark.parametrize("progress", [False, True], ids=["plain", "with-progress"])
def test_a_key_change_while_running_keeps_the_lease_and_the_job_runs_once(
    model: type[TenantJob], progress: bool
) -> None:
    queue = create_job_queue(job_model=model, config=FAST)
    jobs = model._get_collection()
    runs: list[str] = []
    moved = threading.Event()
    beaten = threading.Event()

    def handler(job: TenantJob) -> str:
        runs.append(job.organization)
        if len(runs) == 1:
            jobs.update_one({"_id": job.id}, {"$set": {"organization": "org-B"}})
            moved.set()
            if progress:
                job.report_progress(50, "moved")
            # Beyond two heartbeats and a sweep: before the fix the lease was reported lost and then recovered.
            wait_until(beaten.is_set, timeout=20, what="heartbeats after the key change")
        return "done"

    queue.register_handler("T", handler)
    job = queue.enqueue("T", {}, organization="org-A")
    queue.start_polling()
    try:
        assert moved.wait(20)
        seen = time.monotonic()
        wait_until(lambda: time.monotonic() - seen > 1.5, timeout=10, what="a lease's worth of heartbeats")
        doc = jobs.find_one({"_id": job.id})
        assert doc["status"] == "processing" and doc["lease_expires_at"] is not None
        beaten.set()
        wait_until(lambda: jobs.find_one({"_id": job.id})["status"] == "completed", timeout=20, what="completion")
    finally:
        queue.stop(timeout=10)
    doc = jobs.find_one({"_id": job.id})
    assert runs == ["org-A"], "the job ran again after its key changed"
    assert doc["attempts"] == 1 and doc["result"] == "done" and doc["organization"] == "org-B"
    assert not doc.get("errors")


def test_admin_calls_by_id_follow_a_key_change(model: type[TenantJob]) -> None:
    queue = create_job_queue(job_model=model, config=FAST)
    jobs = model._get_collection()

    def boom(job: TenantJob) -> None:
        raise RuntimeError("boom")

    queue.register_handler("T", boom)
    job = queue.enqueue("T", {}, organization="org-A", max_retries=0)
    queue.start_polling()
    try:
        wait_until(lambda: jobs.find_one({"_id": job.id})["status"] == "failed", timeout=20, what="the failure")
    finally:
        queue.stop(timeout=10)
    jobs.update_one({"_id": job.id}, {"$set": {"organization": "org-B"}})  # after this process claimed it
    assert queue.retry_job(job.id)
    assert jobs.find_one({"_id": job.id})["status"] == "pending"
    jobs.update_one({"_id": job.id}, {"$set": {"organization": "org-C"}})
    assert queue.cancel_job(job.id)
    assert jobs.find_one({"_id": job.id})["status"] == "cancelled"


def test_the_key_helper_keeps_nothing_per_job(model: type[TenantJob]) -> None:
    key = ShardKey(model)
    before = dict(vars(key))
    docs: list[dict[str, Any]] = [{"_id": i, "organization": "o"} for i in range(1_000)]
    for doc in docs:
        assert key.of(doc) == {"organization": "o", "_id": doc["_id"]}
    assert vars(key) == before == {"fields": ("organization", "_id")}


@pytest.mark.parametrize("outcome", ["complete", "complete_many", "fail", "progress", "heartbeat"])
def test_each_fenced_write_adopts_the_new_key_values_and_lands(model: type[TenantJob], outcome: str) -> None:
    queue = create_job_queue(job_model=model, config=FAST)
    jobs = model._get_collection()
    queue.register_handler("T", lambda job: None)
    job = queue.enqueue("T", {}, organization="org-A")
    claimed = queue.worker.claim_one()
    assert claimed is not None and claimed.key == {"organization": "org-A", "_id": job.id}
    jobs.update_one({"_id": job.id}, {"$set": {"organization": "org-B"}})
    store = queue.store.jobs
    if outcome == "complete":
        assert store.complete(claimed, "r")
    elif outcome == "complete_many":
        assert store.complete_many([(claimed, "r")]) == {(claimed.id, claimed.token)}
    elif outcome == "fail":
        error = JobError.from_exception(
            RuntimeError("x"), attempt=1, at=queue.store.now(), token=claimed.token, config=queue.store.config
        )
        assert store.fail(claimed, error)
    elif outcome == "progress":
        assert store.write_progress(claimed, {"percent": 10}) is False
    else:
        beat = store.heartbeat({claimed.id: claimed.token}, None, {claimed.id: claimed})
        assert not beat.lost and not beat.cancel_requested
    assert claimed.key == {"organization": "org-B", "_id": job.id}
    doc = jobs.find_one({"_id": job.id})
    want = {"complete": "completed", "complete_many": "completed", "fail": "failed"}.get(outcome, "processing")
    assert doc["status"] == want
    queue.stop(timeout=5)


def test_a_run_that_lost_its_lease_or_its_job_is_not_written_whatever_its_key(model: type[TenantJob]) -> None:
    queue = create_job_queue(job_model=model, config=FAST)
    jobs = model._get_collection()
    queue.register_handler("T", lambda job: None)
    moved, gone = queue.enqueue("T", {}, organization="org-A"), queue.enqueue("T", {}, organization="org-A")
    runs = [queue.worker.claim_one(), queue.worker.claim_one()]
    assert all(runs)
    by_id = {run.id: run for run in runs if run is not None}
    # Rescued and claimed by someone else, then moved; the other deleted.
    jobs.update_one({"_id": moved.id}, {"$set": {"organization": "org-B", "lease_token": "theirs"}})
    jobs.delete_one({"_id": gone.id})
    assert queue.store.jobs.complete_many([(by_id[moved.id], "r"), (by_id[gone.id], "r")]) == set()
    assert not queue.store.jobs.complete(by_id[moved.id], "r")
    assert by_id[moved.id].key["organization"] == "org-A"  # not ours: nothing adopted
    assert jobs.find_one({"_id": moved.id})["status"] == "processing"
    queue.stop(timeout=5)
