"""Job control on mongomock, single-threaded: retention indexes, unique keys, pause state, cancellation."""

from __future__ import annotations

from typing import Any

from conftest import OrgJob


def ttl_seconds(model: Any = OrgJob) -> dict[str, Any]:
    info = model._get_collection().index_information()
    return {name: ix.get("expireAfterSeconds") for name, ix in info.items() if "expireAfterSeconds" in ix}


def test_retention_indexes_follow_the_setting(make_queue: Any) -> None:
    make_queue(retention_completed_ms=60_000, retention_failed_ms=120_000).ensure_indexes()
    assert ttl_seconds() == {"mjq_ttl_completed": 60, "mjq_ttl_failed": 120}
    make_queue(retention_completed_ms=30_000).ensure_indexes()  # recreated where collMod is missing
    assert ttl_seconds() == {"mjq_ttl_completed": 30}


def test_unique_key_returns_the_unfinished_job_then_is_released(queue: Any) -> None:
    queue.register_handler("T", lambda job: None)
    first = queue.enqueue("T", {"a": 1}, unique_key="k")
    duplicate = queue.enqueue("T", {"a": 2}, unique_key="k")
    assert duplicate.id == first.id and duplicate.data == {"a": 1}
    assert OrgJob.objects.count() == 1
    queue.drain()
    assert queue.enqueue("T", {}, unique_key="k").id != first.id
    assert OrgJob.objects(unique_key="k").count() == 1


def test_paused_queues_and_types_narrow_the_claim(queue: Any) -> None:
    queue.register_handler("A", lambda job: None)
    queue.register_handler("B", lambda job: None)
    queue.enqueue("A", {})
    queue.enqueue("B", {})
    queue.pause(queues=["default"])
    assert queue.worker.claim_scope() == (["A", "B"], [])
    assert queue.run_once() is None
    queue.resume(queues=["default"])
    queue.pause(job_types=["B"])
    assert queue.worker.claim_scope() == (["A"], ["default"])
    assert queue.drain() == 1
    assert queue.stats()["default"]["paused"] is False


def test_cancel_pending_and_request_for_running(queue: Any) -> None:
    queue.register_handler("T", lambda job: None)
    waiting = queue.enqueue("T", {}, delay_ms=60_000)
    running = queue.enqueue("T", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None and claimed.id == running.id
    assert queue.cancel_job(waiting.id) and queue.get_job(waiting.id).status == "cancelled"
    assert queue.cancel_job(running.id) and queue.get_job(running.id).cancel_requested is True
    assert queue.store.jobs.release(claimed) is False  # not handed back to pending once a cancel was requested
    assert queue.store.jobs.cancel_claimed(claimed) is True
    assert queue.get_job(running.id).status == "cancelled"
    assert queue.retry_job(running.id) and queue.get_job(running.id).cancel_requested is None
