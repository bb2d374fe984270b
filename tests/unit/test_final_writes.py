"""The notice of final writes (store/finals.py), single-threaded on mongomock: every final write tells, once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from bson import ObjectId

from mongo_job_queue.store.finals import FinalJob, FinalWrites


@pytest.fixture
def told(queue: Any) -> list[tuple[str, str, Any]]:
    seen: list[tuple[str, str, Any]] = []

    def listener(jobs: Sequence[FinalJob]) -> None:
        seen.extend((str(job.id), job.status, job.doc.get("tags")) for job in jobs)

    queue.store.finals.add(listener, fields=("tags",))
    return seen


def test_completed_failed_and_cancelled_runs_tell_once(queue: Any, told: list[Any]) -> None:
    queue.register_handler("ok", lambda job: None)
    queue.register_handler("bad", lambda job: 1 / 0)
    ok = queue.enqueue("ok", {}, tags={"b": 1})
    bad = queue.enqueue("bad", {}, max_retries=0, tags={"b": 2})
    assert queue.drain() == 2
    assert sorted(told) == sorted([(str(ok.id), "completed", {"b": 1}), (str(bad.id), "failed", {"b": 2})])


def test_a_retried_attempt_is_not_final(queue: Any, told: list[Any]) -> None:
    queue.register_handler("bad", lambda job: 1 / 0)
    queue.enqueue("bad", {}, max_retries=2)
    queue.run_once()
    assert told == []


def test_cancelling_a_pending_job_tells_with_the_listeners_fields(queue: Any, told: list[Any]) -> None:
    # Bulk cancel (a pipeline update mongomock does not follow) is tested over the wire.
    queue.register_handler("T", lambda job: None)
    one = queue.enqueue("T", {}, delay_ms=60_000, tags={"b": 1})
    queue.enqueue("T", {}, delay_ms=60_000, tags={"b": 2})
    assert queue.cancel_job(one.id) is True
    assert told == [(str(one.id), "cancelled", {"b": 1})]


def test_a_failing_listener_leaves_the_write_standing(queue: Any) -> None:
    def broken(jobs: Sequence[FinalJob]) -> None:
        raise RuntimeError("listener down")

    queue.store.finals.add(broken)
    queue.register_handler("ok", lambda job: None)
    job = queue.enqueue("ok", {})
    assert queue.drain() == 1
    job.reload()
    assert job.status == "completed"


def test_without_listeners_nothing_is_collected() -> None:
    # A queue always has two (batches and dependencies, each free for jobs that use neither); a bare notice has none.
    finals = FinalWrites()
    assert not finals.active and finals.fields == frozenset()
    finals.notify_one({"_id": ObjectId()}, "completed")  # a no-op, not an error


def test_a_queues_listeners_ask_for_the_fields_they_read(queue: Any) -> None:
    assert {"batch_id"} <= queue.store.finals.fields
