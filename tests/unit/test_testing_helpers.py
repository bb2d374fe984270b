"""The app-test helpers of ``mongo_job_queue.testing``: eager mode, drain, enqueue assertions."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import OrgJob, raw_docs

from mongo_job_queue import EagerJobFailed, FailJob
from mongo_job_queue.testing import assert_enqueued, assert_not_enqueued, drain, eager, enqueued_jobs


def test_eager_runs_the_job_inside_enqueue_and_returns_its_new_state(queue: Any) -> None:
    sent: list[str] = []
    queue.register_handler("send", lambda job: sent.append(job.data["to"]) or "sent")
    with eager(queue):
        job = queue.enqueue("send", {"to": "ada"}, organization="acme", delay_ms=60_000)
        assert sent == ["ada"]  # delayed jobs run at once too
        assert isinstance(job, OrgJob) and job.status == "completed" and job.result == "sent"
    later = queue.enqueue("send", {"to": "bob"})
    assert later.status == "pending" and sent == ["ada"]  # the mode ended with the block
    assert not queue.eager


def test_eager_enqueue_many_and_unregistered_types(queue: Any) -> None:
    queue.register_handler("a", lambda job: job.data["n"] * 2)
    with eager(queue):
        jobs = queue.enqueue_many([{"job_type": "a", "data": {"n": 1}}, {"job_type": "other", "data": {}}])
    assert [j.status for j in jobs] == ["completed", "pending"]  # no handler here: left for its worker
    assert jobs[0].result == 2


def test_eager_propagates_a_failure_as_an_assertion(queue: Any) -> None:
    def broken(job: Any) -> None:
        raise ValueError("template missing")

    queue.register_handler("broken", broken)
    with eager(queue), pytest.raises(EagerJobFailed, match="template missing") as info:
        queue.enqueue("broken", {}, max_retries=0)
    assert isinstance(info.value, AssertionError)
    assert raw_docs()[0]["status"] == "failed"  # the outcome was recorded first


def test_eager_without_propagate_follows_the_retry_policy_once(queue: Any) -> None:
    def flaky(job: Any) -> None:
        raise ConnectionError("busy")

    queue.register_handler("flaky", flaky)
    queue.register_handler("fatal", lambda job: (_ for _ in ()).throw(FailJob("no")))
    with eager(queue, propagate=False):
        retried = queue.enqueue("flaky", {})
        failed = queue.enqueue("fatal", {})
    assert retried.status == "pending" and retried.attempts == 1 and retried.last_error.message == "busy"
    assert failed.status == "failed"


def test_assert_enqueued_matches_type_fields_and_a_data_subset(queue: Any) -> None:
    queue.enqueue("send", {"to": "ada", "body": "hi"}, organization="acme", queue="mail")
    queue.enqueue("send", {"to": "bob", "body": "hi"}, organization="other")
    found = assert_enqueued(queue, "send", data={"to": "ada"}, organization="acme")
    assert len(found) == 1 and found[0].data["body"] == "hi"
    assert_enqueued(queue, "send", count=2, data={"body": "hi"})
    assert_enqueued(queue, "send", queue="mail", status="pending")
    assert_not_enqueued(queue, "send", data={"to": "carol"})
    assert_not_enqueued(queue, "other")
    with pytest.raises(AssertionError, match=r"expected at least one .send.*found 0"):
        assert_enqueued(queue, "send", organization="nobody")
    with pytest.raises(AssertionError, match="expected 1 'send'"):
        assert_enqueued(queue, "send", count=1)
    with pytest.raises(AssertionError, match="expected no 'send'"):
        assert_not_enqueued(queue, "send", organization="acme")
    with pytest.raises(TypeError, match="no field 'colour'"):
        enqueued_jobs(queue, "send", colour="red")
    assert len(enqueued_jobs(queue)) == 2


def test_drain_runs_everything_due_and_assertions_still_hold(queue: Any, clock: Any) -> None:
    ran: list[int] = []
    queue.register_handler("t", lambda job: ran.append(job.data["n"]))
    for n in range(3):
        queue.enqueue("t", {"n": n})
    queue.enqueue("t", {"n": 99}, delay_ms=10_000)
    assert drain(queue) == 3
    assert sorted(ran) == [0, 1, 2]
    assert_enqueued(queue, "t", count=3, status="completed")
    assert_enqueued(queue, "t", status="pending", data={"n": 99})
    clock.advance(seconds=10)
    assert drain(queue, max_jobs=5) == 1


def test_configure_worker_overrides_config_and_restricts_types(queue: Any) -> None:
    calls: list[str] = []
    queue.register_handler("a", lambda job: calls.append("a"))
    queue.register_handler("b", lambda job: calls.append("b"))

    def wrap(fn: Any) -> Any:
        return lambda job: calls.append("wrapped") or fn(job)

    queue.configure_worker(job_types=["b"], wrap=wrap, concurrency=3, queues=("x", "default"))
    assert queue.config.concurrency == 3 and queue.store.config.queues == ("x", "default")
    queue.enqueue("a", {})
    queue.enqueue("b", {})
    assert queue.drain() == 1
    assert calls == ["wrapped", "b"]
    assert queue.enqueue_many([{"job_type": "a"}])  # enqueue still knows every type


def test_configure_worker_rejects_bad_input(queue: Any) -> None:
    from mongo_job_queue import ConfigError, HandlerError

    queue.register_handler("a", lambda job: None)
    with pytest.raises(ConfigError):
        queue.configure_worker(concurrency=0)
    with pytest.raises(ConfigError, match="unknown config key"):
        queue.configure_worker(colour="red")
    with pytest.raises(HandlerError, match="no handler registered for job type"):
        queue.configure_worker(job_types=["zzz"])
