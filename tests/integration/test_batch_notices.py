"""The notices of final writes to a batch tracker from several threads at once: none is lost.

The notices come from two threads, so this runs over the wire (the in-memory mock is
not safe for concurrent use), on the queue's own store.
"""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from bson import ObjectId

from mongo_job_queue.batches.tracker import BatchTracker
from mongo_job_queue.store import JobStore
from mongo_job_queue.store.finals import FinalJob

pytestmark = pytest.mark.integration


def _both_first_notices_checked(store: JobStore) -> bool:
    """One trial: a new tracker gets its first two notices from two threads at once; both checked?"""
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


def test_the_first_notices_of_a_process_from_two_threads_are_all_checked(make_queue: Any) -> None:
    """Before the fork reset moved to an at-fork hook, two first notices could race it and one was lost."""
    store = make_queue().store
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        lost = sum(not _both_first_notices_checked(store) for _ in range(100))
    finally:
        sys.setswitchinterval(switch)
    assert lost == 0
