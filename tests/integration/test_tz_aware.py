"""A queue on a ``tz_aware=True`` connection behaves as on a naive one: datetimes read back are normalised."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import mongoengine
import pytest
from helpers import holds_for, wait_until

from mongo_job_queue import create_job_queue

from .models import TZ_ALIAS, TzAwareJob

pytestmark = pytest.mark.integration

FAST = {"poll_interval_base_ms": 20, "poll_interval_max_ms": 200, "retry_delay_ms": 50}


@pytest.fixture
def tz_model(mongodb_uri: str, db_name: str) -> Iterator[type[TzAwareJob]]:
    mongoengine.connect(db=db_name, host=mongodb_uri, alias=TZ_ALIAS, uuidRepresentation="standard", tz_aware=True)
    TzAwareJob.drop_collection()
    TzAwareJob._get_db().drop_collection(f"{TzAwareJob._get_collection_name()}_control")
    yield TzAwareJob
    mongoengine.disconnect(alias=TZ_ALIAS)
    TzAwareJob._collection = None


@pytest.fixture
def make_tz_queue(tz_model: type[TzAwareJob]) -> Iterator[Any]:
    made: list[Any] = []

    def make(**config: Any) -> Any:
        queue = create_job_queue(job_model=tz_model, config={**FAST, **config})
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.stop(timeout=10)


def test_the_connection_really_is_tz_aware(tz_model) -> None:
    tz_model._get_collection().insert_one({"at": tz_model._get_collection().database.command("hello")["localTime"]})
    assert tz_model._get_collection().find_one({"at": {"$exists": True}})["at"].tzinfo is not None


@pytest.mark.parametrize("concurrency", [1, 4])  # one claim at a time returns the server's document
def test_a_worker_runs_jobs_and_renews_leases_longer_than_one_lease(make_tz_queue, concurrency) -> None:
    queue = make_tz_queue(concurrency=concurrency, lease_ms=1_500, heartbeat_interval_ms=200, sweep_interval_ms=200)
    release = threading.Event()
    queue.register_handler("quick", lambda job: "ok")
    queue.register_handler("slow", lambda job: release.wait(10) and "slow ok")
    slow = queue.enqueue("slow", {}, priority=-1)  # after the quick ones, which one worker thread runs first
    quick = [queue.enqueue("quick", {"n": i}) for i in range(5)]
    queue.start_polling()
    for job in quick:
        assert queue.wait(job.id, timeout=30).status == "completed"
    wait_until(lambda: queue.get_job(slow.id).status == "processing", timeout=30)
    # Two leases long: only heartbeats keep the slow job's lease.
    holds_for(lambda: queue.get_job(slow.id).status == "processing", 3, interval=0.1, what="the slow job's lease")
    assert queue.running
    release.set()
    done = queue.wait(slow.id, timeout=30)
    assert (done.status, done.attempts, done.result) == ("completed", 1, "slow ok")
    assert not done.errors


def test_a_schedule_fires(make_tz_queue, tz_model) -> None:
    queue = make_tz_queue()
    queue.register_handler("tick", lambda job: None)
    queue.schedule("every-second", job_type="tick", every_ms=200)
    queue.fire_schedules()  # the first tick sets the baseline
    later = queue.store.now() + timedelta(seconds=1)
    assert queue.fire_schedules(later)
    assert queue.fire_schedules(later + timedelta(seconds=1))
    assert tz_model.objects(schedule="every-second").count() >= 2


def test_a_running_worker_fires_a_schedule_by_itself(make_tz_queue, tz_model) -> None:
    queue = make_tz_queue()
    queue.register_handler("tick", lambda job: None)
    queue.schedule("every-200ms", job_type="tick", every_ms=200)
    queue.start_polling()
    wait_until(lambda: tz_model.objects(schedule="every-200ms", status="completed").count() >= 3, timeout=30)
    assert queue.running


def test_unique_for_ms_reserves_then_releases_the_key(make_tz_queue, tz_model) -> None:
    queue = make_tz_queue()
    queue.register_handler("T", lambda job: "done")
    first = queue.enqueue("T", {}, unique_key="daily", unique_for_ms=60_000)
    queue.drain()
    again = queue.enqueue("T", {}, unique_key="daily", unique_for_ms=60_000)
    assert again.id == first.id and again.status == "completed"
    tz_model.objects(id=first.id).update(set__unique_until=queue.store.now() - timedelta(seconds=1))
    fresh = queue.enqueue("T", {}, unique_key="daily", unique_for_ms=60_000)
    assert fresh.id != first.id and fresh.status == "pending"


def test_recovered_lease_and_admin_reads(make_tz_queue, tz_model) -> None:
    queue = make_tz_queue()
    queue.register_handler("T", lambda job: None)
    job = queue.enqueue("T", {})
    claimed = queue.worker.claim_one()
    assert claimed is not None and claimed.id == job.id
    tz_model.objects(id=job.id).update(set__lease_expires_at=queue.store.now() - timedelta(seconds=5))
    assert queue.recover_orphans() == (1, 0)
    assert queue.stats()["default"]["counts"]["pending"] == 1
