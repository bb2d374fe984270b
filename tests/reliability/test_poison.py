"""Poison jobs: handlers that kill their worker, or raise what handlers should never raise.

* A handler that calls ``os._exit(1)`` on every attempt takes its worker
  process down each time. A supervisor (the test, like systemd or
  Kubernetes would) restarts dead workers. The lease rescues count as
  attempts, so the job ends ``failed`` after ``max_retries + 1`` runs
  instead of killing workers forever, and the other jobs still complete.
* Handlers raising ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``
  or an exception whose ``__str__`` raises are failed attempts like any
  other: the worker process lives on and its pool keeps every handler
  thread.
"""

from __future__ import annotations

import pytest
from helpers import wait_until

from .harness import LEASE_EXPIRED, check_invariants, executions_of, running_executions, scaled

pytestmark = pytest.mark.integration

TIMINGS = {"lease_ms": 1_000, "heartbeat_ms": 200, "sweep_ms": 200, "poll_max_ms": 200}
MAX_RETRIES = 2


def test_job_that_kills_its_worker_ends_failed_and_others_complete(fleet, raw_db, make_queue) -> None:
    producer = make_queue()
    poison = producer.enqueue("WORK", {"exit": True}, max_retries=MAX_RETRIES)
    others = scaled(30, minimum=10)
    # Normal jobs may be orphaned by a crash of the worker they share with the poison: give them room.
    producer.enqueue_many([{"job_type": "WORK", "data": {"sleep_ms": 50}, "max_retries": 5}] * others)
    fleet.spawn_many(2, concurrency=2, **TIMINGS)

    restarts = []

    def supervise() -> bool:
        restarts.extend(fleet.replace_dead())
        assert len(restarts) <= MAX_RETRIES + 1, "workers died more often than the poison job may run"
        return raw_db.jobs.count_documents({"status": {"$in": ["completed", "failed"]}}) == others + 1

    wait_until(supervise, timeout=60, interval=0.05, what="every job final, dead workers restarted")

    doc = raw_db.jobs.find_one({"_id": poison.id})
    assert doc["status"] == "failed"
    assert doc["attempts"] == MAX_RETRIES + 1
    runs = executions_of(raw_db, poison.id)
    assert [e["attempt"] for e in runs] == [1, 2, 3]
    assert all(e["end"] is None for e in runs), "each run died inside the handler"
    assert len({e["pid"] for e in runs}) == 3, "each run took a different worker process down"
    assert [(err["type"], err["attempt"]) for err in doc["errors"]] == [(LEASE_EXPIRED, n) for n in (1, 2, 3)]
    assert [err["lease_token"] for err in doc["errors"]] == [e["token"] for e in runs]
    assert "lease expired on attempt 3" in doc["last_error"]["message"]
    assert len(restarts) == MAX_RETRIES + 1
    assert raw_db.jobs.count_documents({"status": "completed"}) == others

    check_invariants(raw_db, expected_jobs=others + 1, outages=fleet.outages, workers=2, faults=len(restarts))


BASE_EXCEPTIONS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "UnprintableError"]
CONCURRENCY = 3


def test_base_exceptions_are_failed_attempts_and_the_pool_keeps_its_size(fleet, raw_db, make_queue) -> None:
    worker = fleet.spawn("pool", concurrency=CONCURRENCY, retry_delay_ms=10)
    producer = make_queue()
    bad = {
        name: producer.enqueue("WORK", {"raise_type": name, "raise": f"raised {name}"}, max_retries=1)
        for name in BASE_EXCEPTIONS
    }
    wait_until(
        lambda: raw_db.jobs.count_documents({"status": "failed"}) == len(bad), timeout=30, what="bad jobs failed"
    )
    for name, job in bad.items():
        doc = raw_db.jobs.find_one({"_id": job.id})
        assert doc["attempts"] == 2, name
        module = "reliability.harness" if name == "UnprintableError" else "builtins"
        assert [e["type"] for e in doc["errors"]] == [f"{module}.{name}"] * 2
        expected = "<unprintable UnprintableError>" if name == "UnprintableError" else f"raised {name}"
        assert doc["last_error"]["message"] == expected
        assert [e["outcome"] for e in executions_of(raw_db, job.id)] == ["raised", "raised"]

    # The process survived and every handler thread is still there: a full pool of
    # slow jobs runs side by side, on as many distinct threads.
    assert worker.alive()
    slow = [producer.enqueue("WORK", {"sleep_ms": 1_000}) for _ in range(CONCURRENCY)]
    wait_until(lambda: len(running_executions(raw_db, worker)) == CONCURRENCY, timeout=30, what="a full pool running")
    assert len({e["thread"] for e in running_executions(raw_db, worker)}) == CONCURRENCY
    status = fleet.status(worker)
    assert status is not None and status["handler_threads"] == CONCURRENCY
    wait_until(lambda: raw_db.jobs.count_documents({"status": "completed"}) == len(slow), timeout=30)
    assert worker.alive()
    assert "unexpected error in handler thread" not in worker.log()
    check_invariants(raw_db, expected_jobs=len(bad) + len(slow), workers=1)
