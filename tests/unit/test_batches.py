"""Batches in the caller's thread on mongomock: eager mode and drain() enqueue the callbacks at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import OrgJob

from mongo_job_queue.testing import drain, eager


@pytest.fixture(autouse=True)
def _fresh_batches() -> Iterator[None]:
    OrgJob._get_db().drop_collection(f"{OrgJob._get_collection_name()}_batches")
    yield
    OrgJob._get_db().drop_collection(f"{OrgJob._get_collection_name()}_batches")


def test_an_eager_batch_runs_its_callbacks_at_the_seal(queue: Any) -> None:
    ran: list[tuple[str, Any]] = []
    queue.register_handler("T", lambda job: ran.append(("T", job.data["n"])))
    queue.register_handler("DONE", lambda job: ran.append(("DONE", job.batch_callback["event"])))
    with eager(queue), queue.batch(on_complete=("DONE", {}), on_success=("DONE", {})) as batch:
        batch.enqueue_many([{"job_type": "T", "data": {"n": n}} for n in range(3)])
        assert ran == [("T", 0), ("T", 1), ("T", 2)]  # run at once; the open batch does not finish
    assert ran[3:] == [("DONE", "success"), ("DONE", "complete")]
    info = queue.get_batch(batch.id)
    assert info.finished and info.counts == {"completed": 3}


def test_drain_finds_the_callbacks_enqueued_by_the_jobs_it_ran(queue: Any) -> None:
    queue.register_handler("T", lambda job: None)
    queue.register_handler("BOOM", lambda job: 1 / 0)
    queue.register_handler("DONE", lambda job: None)
    with queue.batch(on_complete=("DONE", {"k": 1}), on_failure=("DONE", {"k": 2}), tags={"a": 1}) as batch:
        batch.enqueue("T")
        batch.enqueue("BOOM", max_retries=0)
    assert drain(queue) == 4  # the two jobs, then the two callbacks they enqueued
    callbacks = sorted((d.batch_callback["event"], d.data["k"], d.tags) for d in OrgJob.objects(type="DONE"))
    assert callbacks == [("complete", 1, {"a": 1}), ("failure", 2, {"a": 1})]
    assert queue.get_batch(batch.id).fired == ("failure", "complete")


# The first notices of a process from two threads: tests/integration/test_batch_notices.py.
