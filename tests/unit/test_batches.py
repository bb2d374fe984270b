"""Batches in the caller's thread on mongomock: eager mode and drain() enqueue the callbacks at once."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from bson import ObjectId
from conftest import OrgJob

from mongo_job_queue.batches.tracker import BatchTracker
from mongo_job_queue.store.finals import FinalJob
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


def _both_first_notices_checked() -> bool:
    """One trial: a new tracker gets its first two notices from two threads at once; both checked?"""
    store = SimpleNamespace(finals=SimpleNamespace(add=lambda *a, **k: None))
    enqueuer = SimpleNamespace(worker=SimpleNamespace(running=True))
    tracker = BatchTracker(store, enqueuer, SimpleNamespace(eager=False))  # type: ignore[arg-type]
    seen: set[Any] = set()
    lock = threading.Lock()

    def checked(batch_id: ObjectId, **_: Any) -> None:
        with lock:
            seen.add(batch_id)

    tracker.check_logged = checked  # type: ignore[method-assign]
    ids = [ObjectId(), ObjectId()]
    gate = threading.Barrier(2)

    def notice(i: int) -> None:
        gate.wait()
        try:
            tracker.on_final([FinalJob(ObjectId(), "completed", {"batch_id": ids[i]})])
        except RuntimeError as exc:  # "cannot notify on un-acquired lock": the lock was replaced under it
            with lock:
                seen.add(exc)

    threads = [threading.Thread(target=notice, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 2
    while len(seen & set(ids)) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    return seen == set(ids)


def test_the_first_notices_of_a_process_from_two_threads_are_all_checked() -> None:
    """Before the fork reset moved to an at-fork hook, two first notices could race it and one was lost."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        lost = sum(not _both_first_notices_checked() for _ in range(100))
    finally:
        sys.setswitchinterval(switch)
    assert lost == 0
