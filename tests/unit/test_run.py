"""Running jobs with run_once()/drain(): ordering, scheduling, claim filters and results."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from conftest import START, OrgJob, raw_doc, raw_docs


def test_run_once_returns_none_when_nothing_is_due(queue: Any) -> None:
    queue.register_handler("t", lambda job: None)
    assert queue.run_once() is None
    queue.enqueue("t", delay_ms=1)
    assert queue.run_once() is None
    assert raw_doc()["status"] == "pending"
    assert raw_doc()["attempts"] == 0


def test_run_once_without_handlers_claims_nothing(queue: Any) -> None:
    queue.enqueue("t")
    assert queue.run_once() is None
    assert raw_doc()["status"] == "pending"


def test_run_once_completes_a_job_and_stores_the_result(queue: Any, clock: Any) -> None:
    queue.register_handler("add", lambda job: {"sum": job.data["a"] + job.data["b"]})
    enqueued = queue.enqueue("add", {"a": 2, "b": 3})
    clock.advance(seconds=1)
    done = queue.run_once()
    assert isinstance(done, OrgJob)
    assert done.id == enqueued.id
    assert done.status == "completed"
    assert done.result == {"sum": 5}
    assert done.attempts == 1
    doc = raw_doc()
    assert doc["status"] == "completed"
    assert doc["result"] == {"sum": 5}
    assert doc["attempts"] == 1
    assert doc["started_at"] == START + timedelta(seconds=1)
    assert doc["finished_at"] == START + timedelta(seconds=1)
    assert "lease_expires_at" not in doc
    assert queue.counts() == {"pending": 0, "processing": 0, "completed": 1, "failed": 0, "cancelled": 0, "blocked": 0}
    assert queue.run_once() is None


def test_handler_gets_the_app_model_instance(queue: Any) -> None:
    received: list[Any] = []
    queue.register_handler("t", received.append)
    enqueued = queue.enqueue("t", {"k": "v"}, organization="acme")
    queue.run_once()
    assert len(received) == 1
    job = received[0]
    assert type(job) is OrgJob
    assert job.id == enqueued.id
    assert job.organization == "acme"
    assert job.data == {"k": "v"}
    assert job.status == "processing"
    assert job.attempts == 1
    assert job.lease_token is not None


def test_higher_priority_runs_first_then_earlier_run_at(queue: Any, clock: Any) -> None:
    order: list[str] = []
    queue.register_handler("t", lambda job: order.append(job.data["name"]))
    queue.enqueue("t", {"name": "low-early"}, priority=0, run_at=START - timedelta(seconds=30))
    queue.enqueue("t", {"name": "high-late"}, priority=5, run_at=START - timedelta(seconds=1))
    queue.enqueue("t", {"name": "high-early"}, priority=5, run_at=START - timedelta(seconds=20))
    queue.enqueue("t", {"name": "low-late"}, priority=0, run_at=START - timedelta(seconds=10))
    queue.enqueue("t", {"name": "negative"}, priority=-1, run_at=START - timedelta(seconds=60))
    assert queue.drain() == 5
    assert order == ["high-early", "high-late", "low-early", "low-late", "negative"]


def test_delayed_job_runs_only_after_its_run_at(queue: Any, clock: Any) -> None:
    ran: list[str] = []
    queue.register_handler("t", lambda job: ran.append(job.data["n"]))
    queue.enqueue("t", {"n": "later"}, delay_ms=5_000)
    queue.enqueue("t", {"n": "now"})
    assert queue.drain() == 1
    assert ran == ["now"]
    clock.advance(ms=4_999)
    assert queue.run_once() is None
    clock.advance(ms=1)
    done = queue.run_once()
    assert done is not None
    assert done.status == "completed"
    assert ran == ["now", "later"]


def test_run_at_in_the_future_waits(queue: Any, clock: Any) -> None:
    queue.register_handler("t", lambda job: "ok")
    queue.enqueue("t", run_at=START + timedelta(hours=1))
    assert queue.drain() == 0
    clock.advance(seconds=3_600)
    assert queue.drain() == 1
    assert raw_doc()["result"] == "ok"


def test_drain_returns_count_and_respects_max_jobs(queue: Any) -> None:
    queue.register_handler("t", lambda job: None)
    for i in range(5):
        queue.enqueue("t", {"i": i})
    assert queue.drain(max_jobs=2) == 2
    assert queue.counts()["completed"] == 2
    assert queue.counts()["pending"] == 3
    assert queue.drain(max_jobs=0) == 0
    assert queue.drain() == 3
    assert queue.counts()["completed"] == 5
    assert queue.drain() == 0


def test_only_registered_types_are_claimed(queue: Any) -> None:
    queue.register_handler("known", lambda job: None)
    queue.enqueue("unknown", priority=10)
    queue.enqueue("known")
    assert queue.drain() == 1
    by_type = {d["type"]: d for d in raw_docs()}
    assert by_type["known"]["status"] == "completed"
    assert by_type["unknown"]["status"] == "pending"
    assert by_type["unknown"]["attempts"] == 0
    assert "lease_token" not in by_type["unknown"]


def test_only_configured_queues_are_claimed(make_queue: Any) -> None:
    queue = make_queue(queues=["high", "default"])
    queue.register_handler("t", lambda job: None)
    queue.enqueue("t", queue="high")
    queue.enqueue("t", queue="default")
    queue.enqueue("t", queue="other")
    assert queue.drain() == 2
    by_queue = {d["queue"]: d["status"] for d in raw_docs()}
    assert by_queue == {"high": "completed", "default": "completed", "other": "pending"}
    assert queue.counts("other") == {
        "pending": 1,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "blocked": 0,
    }


def test_non_bson_result_completes_without_storing_it(queue: Any) -> None:
    queue.register_handler("t", lambda job: {"handle": object()})
    done = queue.run_once()
    assert done is None  # nothing enqueued yet
    queue.enqueue("t")
    done = queue.run_once()
    assert done.status == "completed"
    assert done.result is None
    doc = raw_doc()
    assert doc["status"] == "completed"
    assert "result" not in doc
    assert "last_error" not in doc


def test_result_with_non_string_keys_is_not_stored(queue: Any) -> None:
    queue.register_handler("t", lambda job: {1: "one"})
    queue.enqueue("t")
    assert queue.run_once().status == "completed"
    assert "result" not in raw_doc()


def test_falsy_results_are_stored(queue: Any) -> None:
    results = iter([0, "", [], False])
    queue.register_handler("t", lambda job: next(results))
    for _ in range(4):
        queue.enqueue("t")
    assert queue.drain() == 4
    assert [d["result"] for d in raw_docs()] == [0, "", [], False]


def test_worker_id_is_written_into_the_lease_owner(make_queue: Any) -> None:
    queue = make_queue(worker_id="worker-7")
    owners: list[Any] = []
    queue.register_handler("t", lambda job: owners.append(job.lease_owner.worker_id))
    queue.enqueue("t")
    queue.run_once()
    assert owners == ["worker-7"]
    assert raw_doc()["lease_owner"]["worker_id"] == "worker-7"
