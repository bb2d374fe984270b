"""Pause and resume over the wire: every worker honours the state stored in the database."""

from __future__ import annotations

import pytest
from helpers import holds_for, wait_until

from mongo_job_queue import InvalidJobError

pytestmark = pytest.mark.integration


def test_a_paused_queue_is_not_claimed_by_any_worker_until_resumed(make_queue, job_model) -> None:
    workers = [make_queue(queues=["default", "mail"], pause_refresh_ms=200, concurrency=2) for _ in range(3)]
    for worker in workers:
        worker.register_handler("T", lambda job: None)
        worker.start_polling()
    admin = make_queue()  # e.g. a web process: pauses without running a worker
    assert admin.pause(queues=["mail"]) == {"queues": ["mail"], "job_types": []}
    # Wait past one refresh of every worker, proven by a job of the other queue running.
    probe = admin.enqueue("T", {})
    wait_until(lambda: admin.get_job(probe.id).status == "completed", timeout=30)
    holds_for(lambda: True, 0.3)  # every worker has re-read the state by now
    held = [admin.enqueue("T", {"n": i}, queue="mail") for i in range(5)]
    holds_for(
        lambda: job_model.objects(queue="mail", status="pending").count() == 5, 1.0, what="paused queue untouched"
    )
    stats = admin.stats()
    assert stats["mail"]["paused"] is True and stats["default"]["paused"] is False
    assert admin.resume(queues=["mail"]) == {"queues": [], "job_types": []}
    wait_until(lambda: all(admin.get_job(j.id).status == "completed" for j in held), timeout=30)


def test_a_paused_job_type_is_not_claimed_in_any_queue(make_queue, job_model) -> None:
    queue = make_queue()
    ran = []
    queue.register_handler("A", lambda job: ran.append("A"))
    queue.register_handler("B", lambda job: ran.append("B"))
    queue.pause(job_types=["A"])
    queue.enqueue("A", {})
    queue.enqueue("B", {})
    assert queue.drain() == 1 and ran == ["B"]  # run_once honours it too, at once in this process
    assert queue.paused() == {"queues": [], "job_types": ["A"]}
    queue.resume(job_types=["A"])
    assert queue.drain() == 1 and ran == ["B", "A"]


def test_a_paused_empty_queue_shows_in_stats(make_queue) -> None:
    queue = make_queue()
    queue.pause(queues=["reports"])
    assert queue.stats()["reports"] == {
        "counts": {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0, "blocked": 0},
        "oldest_due_age_s": None,
        "paused": True,
    }


def test_bad_names_are_rejected_and_change_nothing(make_queue) -> None:
    queue = make_queue()
    with pytest.raises(InvalidJobError, match="not the str"):
        queue.pause(queues="mail")
    with pytest.raises(InvalidJobError, match="invalid name"):
        queue.pause(job_types=["ok", ""])
    assert queue.paused() == {"queues": [], "job_types": []}


def test_resume_wakes_an_idle_worker_of_this_process_at_once(make_queue, job_model) -> None:
    # A long idle interval: without the wake-up the job would wait for the next poll, 10 s away.
    queue = make_queue(poll_interval_base_ms=10_000, poll_interval_max_ms=30_000, change_stream_wakeups=False)
    queue.register_handler("T", lambda job: None)
    queue.pause(queues=["default"])
    queue.start_polling()
    job = queue.enqueue("T", {})
    holds_for(lambda: queue.get_job(job.id).status == "pending", 0.3, what="paused")
    queue.resume(queues=["default"])
    wait_until(lambda: queue.get_job(job.id).status == "completed", timeout=5, what="the resumed job runs")
