"""Leases over the wire: heartbeat renewal, fencing of late writes, orphan recovery."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from helpers import wait_until

from mongo_job_queue import LeaseOwner
from mongo_job_queue.clock import utcnow

pytestmark = pytest.mark.integration


def test_job_longer_than_several_leases_is_renewed_and_runs_once(make_queue, job_model) -> None:
    worker = make_queue(lease_ms=800, heartbeat_interval_ms=150)
    runs: list[int] = []

    @worker.handler("LONG")
    def long_job(job) -> str:
        runs.append(job.attempts)
        threading.Event().wait(2.5)  # the job's own work: three leases long
        return "finished"

    # A second worker sweeping for expired leases all the time.
    sweeper = make_queue(sweep_interval_ms=100, lease_ms=800, heartbeat_interval_ms=150)
    sweeper.register_handler("LONG", long_job)
    job = worker.enqueue("LONG", {})
    worker.start_polling()
    wait_until(lambda: runs)
    sweeper.start_polling()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed", timeout=20)
    done = job_model.objects.get(id=job.id)
    assert runs == [1]
    assert done.attempts == 1
    assert done.result == "finished"
    assert not done.errors


def test_late_completion_after_lost_lease_is_fenced(make_queue, job_model, caplog) -> None:
    offset = timedelta(0)

    def clock():
        return utcnow() + offset

    queue_a = make_queue(lease_ms=1_000, heartbeat_interval_ms=200)
    job = queue_a.enqueue("PAY", {"amount": 10})
    claimed_a = queue_a.store.jobs.claim(["PAY"], ["default"], LeaseOwner.current("worker-a"))
    assert claimed_a is not None
    assert claimed_a.id == job.id
    # Worker A freezes. Worker B's clock is past A's lease: it recovers and completes the job.
    offset = timedelta(seconds=5)
    # sync_clock off: this test moves time by skewing the clock on purpose.
    queue_b = make_queue(lease_ms=1_000, heartbeat_interval_ms=200, clock=clock, sync_clock=False)
    queue_b.register_handler("PAY", lambda j: {"paid_by": "B"})
    assert queue_b.recover_orphans() == (1, 0)
    done = queue_b.run_once()
    assert done is not None
    assert done.status == "completed"
    assert done.attempts == 2
    # A wakes up and reports its outcomes: none of its writes land.
    assert queue_a.store.jobs.complete(claimed_a, {"paid_by": "A"}) is False
    assert queue_a.store.jobs.renew_leases({claimed_a.id: claimed_a.token}) == {claimed_a.id}
    final = job_model.objects.get(id=job.id)
    assert final.status == "completed"
    assert final.result == {"paid_by": "B"}
    assert final.attempts == 2
    assert final.lease_token != claimed_a.token


def test_late_completion_through_the_worker_is_logged(make_queue, job_model, caplog) -> None:
    queue_a = make_queue()
    queue_a.register_handler("PAY", lambda j: "A")
    queue_a.enqueue("PAY", {})
    claimed = queue_a.worker.claim_one()
    assert claimed is not None
    # Someone else took the lease (as after a rescue and a new claim).
    job_model.objects(id=claimed.id).update(set__lease_token="another-workers-token")
    with caplog.at_level("WARNING"):
        queue_a.worker.process(claimed)
    assert "lease was lost" in caplog.text
    record = next(r for r in caplog.records if "lease was lost" in r.getMessage())
    assert record.job_id == str(claimed.id)
    assert record.job_type == "PAY"
    assert record.attempt == 1
    assert job_model.objects.get(id=claimed.id).status == "processing"


def test_orphan_of_a_crashed_worker_is_recovered_and_rerun(make_queue, job_model) -> None:
    crashed = make_queue(lease_ms=400, heartbeat_interval_ms=100)
    job = crashed.enqueue("WORK", {})
    assert crashed.store.jobs.claim(["WORK"], ["default"], LeaseOwner.current("crashed")) is not None
    # The crashed worker never heartbeats again. A live worker sweeps every 100 ms.
    live = make_queue(lease_ms=400, heartbeat_interval_ms=100, sweep_interval_ms=100)
    live.register_handler("WORK", lambda j: j.attempts)
    live.start_polling()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed", timeout=10)
    done = job_model.objects.get(id=job.id)
    assert done.attempts == 2
    assert done.result == 2
    assert len(done.errors) == 1
    assert "lease expired on attempt 1" in done.errors[0].message
    assert "crashed" in done.errors[0].message


def test_job_that_keeps_killing_workers_ends_failed(make_queue, job_model) -> None:
    offset = timedelta(0)

    def clock():
        return utcnow() + offset

    queue = make_queue(lease_ms=1_000, heartbeat_interval_ms=200, max_retries=1, clock=clock, sync_clock=False)
    queue.register_handler("POISON", lambda j: None)  # the rescuer knows the bound (one without it requeues)
    job = queue.enqueue("POISON", {})
    for expected in [(1, 0), (0, 1)]:
        claimed = queue.store.jobs.claim(["POISON"], ["default"], LeaseOwner.current("doomed"))
        assert claimed is not None
        offset += timedelta(seconds=2)  # the worker died; its lease runs out
        assert queue.recover_orphans() == expected
    final = job_model.objects.get(id=job.id)
    assert final.status == "failed"
    assert final.attempts == 2
    assert len(final.errors) == 2
    assert queue.store.jobs.claim(["POISON"], ["default"], LeaseOwner.current("next")) is None
