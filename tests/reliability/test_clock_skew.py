"""Worker clocks minutes ahead or behind: no early delayed job, no stolen lease.

Where time comes from: every time the queue writes or compares (``run_at``,
lease expiry) is the local clock corrected by its offset from the server's
clock, measured with ``hello`` (``sync_clock``, on by default). So all
workers judge due times and leases by one clock. Each scenario runs a skewed
worker twice: with ``sync_clock`` (must be safe) and without it (must show
the failure), which proves the scenario can detect the bug.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from mongo_job_queue import LeaseOwner
from mongo_job_queue.clock import utcnow

pytestmark = pytest.mark.integration

SKEWS = [timedelta(minutes=10), timedelta(minutes=-10)]


def skewed(offset: timedelta):
    return lambda: utcnow() + offset


@pytest.mark.parametrize("sync", [True, False], ids=["synced", "unsynced"])
def test_worker_ahead_does_not_run_a_delayed_job_early(make_queue, job_model, sync) -> None:
    web = make_queue()
    job = web.enqueue("LATER", {}, delay_ms=60_000)
    worker = make_queue(clock=skewed(timedelta(minutes=10)), sync_clock=sync)
    worker.register_handler("LATER", lambda j: None)
    ran = worker.run_once()
    if sync:
        assert ran is None
        assert job_model.objects.get(id=job.id).status == "pending"
    else:  # the bug the clock sync prevents
        assert ran is not None and ran.id == job.id


@pytest.mark.parametrize("skew", SKEWS, ids=["sweeper-ahead", "sweeper-behind"])
@pytest.mark.parametrize("sync", [True, False], ids=["synced", "unsynced"])
def test_skewed_sweeper_does_not_steal_a_live_lease(make_queue, job_model, skew, sync) -> None:
    owner = make_queue(lease_ms=30_000, heartbeat_interval_ms=5_000)
    job = owner.enqueue("WORK", {})
    assert owner.store.jobs.claim(["WORK"], ["default"], LeaseOwner.current("owner")) is not None
    sweeper = make_queue(lease_ms=30_000, heartbeat_interval_ms=5_000, clock=skewed(skew), sync_clock=sync)
    recovered = sweeper.recover_orphans()
    if sync or skew < timedelta(0):
        assert recovered == (0, 0)
        assert job_model.objects.get(id=job.id).status == "processing"
    else:  # an unsynced sweeper ten minutes ahead sees every lease as expired
        assert recovered == (1, 0)


@pytest.mark.parametrize("sync", [True, False], ids=["synced", "unsynced"])
def test_owner_behind_keeps_its_lease_alive(make_queue, job_model, sync) -> None:
    """A lease written by a slow clock must not look expired to everyone else."""
    owner = make_queue(
        lease_ms=30_000, heartbeat_interval_ms=5_000, clock=skewed(-timedelta(minutes=10)), sync_clock=sync
    )
    job = owner.enqueue("WORK", {})
    claimed = owner.store.jobs.claim(["WORK"], ["default"], LeaseOwner.current("slow-owner"))
    assert claimed is not None
    assert owner.store.jobs.renew_leases({claimed.id: claimed.token}) == set()
    sweeper = make_queue(lease_ms=30_000, heartbeat_interval_ms=5_000)
    recovered = sweeper.recover_orphans()
    if sync:
        assert recovered == (0, 0)
        assert job_model.objects.get(id=job.id).status == "processing"
    else:
        assert recovered == (1, 0)


def test_offset_is_measured_against_the_server(make_queue) -> None:
    queue = make_queue(clock=skewed(timedelta(minutes=7)))
    queue.store.now()
    measured = queue.store.clock_offset
    assert abs(measured + timedelta(minutes=7)) < timedelta(seconds=2)
    assert abs(queue.store.now() - utcnow()) < timedelta(seconds=2)


@pytest.mark.parametrize("sync", [True, False], ids=["synced", "unsynced"])
def test_a_scheduler_ahead_fires_by_the_server_clock_and_its_jobs_never_run_early(make_queue, raw_db, sync) -> None:
    ahead = make_queue(clock=skewed(timedelta(minutes=10)), sync_clock=sync)
    ahead.schedule("minutely", "* * * * *", "T")
    ahead.fire_schedules()  # first sight: its latest fire time, by its clock, is marked handled
    server_now = raw_db.client.admin.command("hello")["localTime"].replace(tzinfo=None)
    handled = max(raw_db.jobs_control.find_one({"_id": "schedule:minutely"})["handled"].values())
    if sync:
        assert handled <= server_now
        return
    assert handled > server_now + timedelta(minutes=9)  # the bug the clock sync prevents
    # Even so, the job of a fire time ten minutes ahead waits for that time on a synced worker.
    [fire] = ahead.fire_schedules(handled + timedelta(minutes=1))
    assert fire.enqueued
    worker = make_queue()
    worker.register_handler("T", lambda job: None)
    assert worker.run_once() is None
