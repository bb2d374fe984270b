"""Administration over the wire: retry, cancel, purge, per-queue stats."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from mongo_job_queue import FailJob, InvalidJobError

pytestmark = pytest.mark.integration


def test_retry_a_failed_job_with_a_fresh_attempt_budget(make_queue, job_model) -> None:
    queue = make_queue(max_retries=0)
    outcomes = iter([FailJob("first run fails"), None])

    @queue.handler("T")
    def handler(job) -> None:
        outcome = next(outcomes)
        if outcome:
            raise outcome

    job = queue.enqueue("T", {})
    assert queue.run_once().status == "failed"
    assert queue.retry_job(str(job.id)) is True
    again = queue.get_job(job.id)
    assert again.status == "pending" and again.attempts == 0 and again.finished_at is None
    assert len(again.errors) == 1  # the history is kept
    assert queue.run_once().status == "completed"
    assert queue.retry_job(job.id) is False  # completed jobs are not retried


def test_cancel_only_pending_jobs(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    waiting = queue.enqueue("T", {}, delay_ms=60_000)
    assert queue.cancel_job(waiting.id) is True
    cancelled = queue.get_job(waiting.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert queue.cancel_job(waiting.id) is False
    assert queue.run_once() is None
    assert queue.retry_job(waiting.id) is True
    assert queue.get_job(waiting.id).status == "pending"


def test_purge_deletes_only_old_finished_jobs(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    old, recent = queue.enqueue("T", {}), queue.enqueue("T", {})
    pending = queue.enqueue("T", {}, delay_ms=60_000)
    assert queue.drain() == 2
    job_model.objects(id=old.id).update(set__finished_at=queue.store.now() - timedelta(days=8))
    assert queue.purge(older_than_ms=7 * 24 * 3600 * 1000) == 1
    assert {j.id for j in job_model.objects} == {recent.id, pending.id}
    with pytest.raises(InvalidJobError, match="only finished jobs"):
        queue.purge(0, statuses=["pending"])
    with pytest.raises(InvalidJobError):
        queue.purge(-1)
    assert job_model.objects.count() == 2


def test_stats_counts_by_queue_and_status_with_oldest_due_age(make_queue, job_model) -> None:
    queue = make_queue(queues=["default", "mail"])
    queue.register_handler("T", lambda job: None)
    queue.enqueue("T", {}, queue="mail", run_at=queue.store.now() - timedelta(seconds=90))
    queue.enqueue("T", {}, queue="mail", delay_ms=60_000)  # not due: not counted in the age
    queue.enqueue("T", {}, queue="reports")
    done = queue.enqueue("T", {})
    queue.run_once()  # the oldest due job: the one in 'mail'
    queue.run_once()
    stats = queue.stats()
    assert set(stats) == {"default", "mail", "reports"}
    assert stats["default"]["counts"]["completed"] == 1
    assert stats["default"]["oldest_due_age_s"] is None
    assert stats["mail"]["counts"] == {
        "pending": 1,
        "processing": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
        "blocked": 0,
    }
    assert stats["mail"]["oldest_due_age_s"] is None  # only the delayed one is left
    assert stats["reports"]["counts"]["pending"] == 1
    assert 0 <= stats["reports"]["oldest_due_age_s"] < 60
    assert queue.get_job(done.id).status == "completed"


def test_stats_counts_are_one_snapshot_while_jobs_move(make_queue, job_model, monkeypatch) -> None:
    """A job that finishes while the counts are read is counted once: never both processing and completed.

    The counts were one command per (status, queue): a scrape could read
    ``processing`` before an ack and ``completed`` after it, and report a job
    twice (Prometheus showed 2 processing beside all 7 completed).
    """
    from pymongo.collection import Collection

    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    moving = queue.enqueue("T", {})
    job_model.objects(id=moving.id).update(set__status="processing")
    moved: list[bool] = []

    def counted_processing(name: str, args: tuple[Any, ...], result: Any) -> bool:
        if name == "count_documents":
            return args[0].get("status") == "processing" and result == 1
        return any(isinstance(row.get("_id"), dict) and row["_id"].get("status") == "processing" for row in result)

    def moving_after(name: str) -> Any:
        original = getattr(Collection, name)

        def read(self: Collection, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            if name == "aggregate":
                result = list(result)
            if self.name == job_model._get_collection_name() and not moved and counted_processing(name, args, result):
                moved.append(True)  # the job finishes right after a read counted it as processing
                job_model.objects(id=moving.id).update(set__status="completed")
            return iter(result) if name == "aggregate" else result

        return read

    for name in ("aggregate", "count_documents"):
        monkeypatch.setattr(Collection, name, moving_after(name))
    counts = queue.stats()["default"]["counts"]
    assert moved
    assert counts["processing"] + counts["completed"] == 1, counts
