"""Batches with callbacks over the wire: each callback fires exactly once, the counts match the jobs."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from helpers import wait_until

from mongo_job_queue import BatchSealedError, InvalidBatchError, InvalidJobError

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_batches(job_model) -> None:
    job_model._get_db().drop_collection(f"{job_model._get_collection_name()}_batches")


def callbacks_of(raw_db, batch_id) -> list[tuple[str, Any]]:
    """The callback jobs stored for a batch: (event, status), one per stored job."""
    docs = raw_db.jobs.find({"batch_callback.batch_id": batch_id}, sort=[("_id", 1)])
    return sorted((d["batch_callback"]["event"], d["type"]) for d in docs)


def finished(queue, batch_id):
    return wait_until(
        lambda: (info := queue.get_batch(batch_id)) is not None and info.finished and info,
        timeout=30,
        what=f"batch {batch_id} finished",
    )


CALLBACKS = {"on_complete": ("DONE", {"n": 1}), "on_success": ("OK", None), "on_failure": ("BAD", {})}


def test_a_one_job_batch_fires_complete_and_success(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    with queue.batch(**CALLBACKS, organization="acme") as batch:
        job = batch.enqueue("T", {"x": 1})
    assert job.batch_id == batch.id and job.organization == "acme"
    queue.start_polling()
    info = finished(queue, batch.id)
    assert info.counts == {"completed": 1} and info.fired == ("success", "complete")
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("success", "OK")]
    done = raw_db.jobs.find_one({"_id": info.callbacks["complete"]})
    assert done["data"] == {"n": 1} and done["organization"] == "acme" and "batch_id" not in done
