"""Administration over the wire: retry, cancel, purge, per-queue stats."""

from __future__ import annotations

from datetime import timedelta

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
    assert stats["mail"]["counts"] == {"pending": 1, "processing": 0, "completed": 1, "failed": 0, "cancelled": 0}
    assert stats["mail"]["oldest_due_age_s"] is None  # only the delayed one is left
    assert stats["reports"]["counts"]["pending"] == 1
    assert 0 <= stats["reports"]["oldest_due_age_s"] < 60
    assert queue.get_job(done.id).status == "completed"
