"""Database faults injected with ``configureFailPoint``/``failCommand``.

Each fault hits the queue's own connection (selected by its appName) on one
of the commands the queue relies on: the claim (findAndModify), and the
completion, heartbeat and retry-reschedule writes (update). Pass: the job
ends in the right state exactly once, and the worker keeps working after
the fault clears.
"""

from __future__ import annotations

import threading

import pytest
from helpers import holds_for, wait_until

pytestmark = pytest.mark.integration


def _runs(queue, job_type: str) -> list[int]:
    runs: list[int] = []
    lock = threading.Lock()

    def handler(job) -> str:
        with lock:
            runs.append(job.attempts)
        if job.data.get("fail_first") and job.attempts == 1:
            raise ConnectionError("first attempt fails")
        return "ok"

    queue.register_handler(job_type, handler)
    return runs


def _keeps_working(queue, job_model) -> None:
    after = queue.enqueue("JOB", {"after": "fault"})
    wait_until(lambda: job_model.objects.get(id=after.id).status == "completed", what="a job after the fault")


FAULTS = {
    "connection closed": {"closeConnection": True},
    "primary stepped down": {"errorCode": 189},
    "not writable primary": {"errorCode": 10107},
    "interrupted by replication state change": {"errorCode": 11602},
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize(("step", "command"), [("claim", "findAndModify"), ("completion", "update")])
def test_claim_and_completion_survive_fault(make_queue, job_model, failpoint, step, command, fault) -> None:
    queue = make_queue()
    runs = _runs(queue, "JOB")
    job = queue.enqueue("JOB", {})
    # times=3: the driver's own single retry and then ours both see the fault.
    failpoint([command], 3, **FAULTS[fault])
    queue.start_polling()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert runs == [1]
    assert job_model.objects.get(id=job.id).attempts == 1
    _keeps_working(queue, job_model)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_retry_reschedule_survives_fault(make_queue, job_model, failpoint, fault) -> None:
    queue = make_queue(retry_delay_ms=10)
    runs = _runs(queue, "JOB")
    job = queue.enqueue("JOB", {"fail_first": True})
    queue.start_polling()
    # Arm as the first attempt runs, so the reschedule write meets the fault.
    wait_until(lambda: runs)
    failpoint(["update"], 3, **FAULTS[fault])
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert runs == [1, 2]
    done = job_model.objects.get(id=job.id)
    assert done.attempts == 2
    assert len(done.errors) == 1
    _keeps_working(queue, job_model)


def test_heartbeat_survives_fault_and_keeps_the_lease(make_queue, job_model, failpoint) -> None:
    queue = make_queue(lease_ms=3_000, heartbeat_interval_ms=500)
    release = threading.Event()

    @queue.handler("JOB")
    def long_job(job) -> str:
        assert release.wait(30)
        return "ok"

    job = queue.enqueue("JOB", {})
    queue.start_polling()
    try:
        wait_until(lambda: job_model.objects.get(id=job.id).status == "processing")
        # Two failed renewals (about half a second each while the driver
        # rediscovers the "stepped down" primary) fit well inside one lease.
        failpoint(["update"], 2, errorCode=189)
        sweeper = make_queue(lease_ms=3_000, heartbeat_interval_ms=500)
        # Longer than a lease: only renewals, retried through the fault, keep the job.
        holds_for(lambda: sweeper.recover_orphans() == (0, 0), duration=4.0, what="no rescue of a live job")
    finally:
        release.set()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert job_model.objects.get(id=job.id).attempts == 1


def test_claim_applied_but_reply_lost_is_found_by_token(make_queue, job_model, failpoint) -> None:
    """A writeConcernError means the claim applied: the retry must find it, not orphan it."""
    queue = make_queue()
    runs = _runs(queue, "JOB")
    job = queue.enqueue("JOB", {})
    failpoint(["findAndModify"], 1, writeConcernError={"code": 64, "errmsg": "waiting for replication timed out"})
    queue.start_polling()
    wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
    assert runs == [1]
    assert job_model.objects.get(id=job.id).attempts == 1


def test_completion_applied_but_reply_lost_is_not_reported_as_lost_lease(
    make_queue, job_model, failpoint, caplog
) -> None:
    queue = make_queue()
    runs = _runs(queue, "JOB")
    job = queue.enqueue("JOB", {})
    failpoint(["update"], 1, writeConcernError={"code": 64, "errmsg": "waiting for replication timed out"})
    with caplog.at_level("INFO"):
        queue.start_polling()
        wait_until(lambda: job_model.objects.get(id=job.id).status == "completed")
        queue.stop(timeout=10)
    assert runs == [1]
    assert "lease was lost" not in caplog.text
    assert "completed" in caplog.text
