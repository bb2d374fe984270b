"""A fresh collection, as a new app meets it: the queue's first use creates and checks its indexes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from mongo_job_queue import IndexSetupError

pytestmark = pytest.mark.integration


def test_concurrent_first_enqueues_of_one_key_on_a_fresh_collection_make_one_job(make_queue, job_model) -> None:
    queue = make_queue()  # default config: nothing about indexes is set or called
    start = threading.Barrier(16)
    ids: list[object] = []
    errors: list[BaseException] = []

    def enqueue(i: int) -> None:
        try:
            start.wait(timeout=30)
            ids.append(queue.enqueue("report", {"n": i}, unique_key="report:acme").id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue, args=(i,), daemon=True) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [t for t in threads if t.is_alive()], "enqueues hung (the server livelocked)"
    assert not errors
    assert job_model.objects(type="report").count() == 1
    assert len(set(ids)) == 1


def test_the_first_enqueue_creates_the_unique_indexes(make_queue, raw_db, job_model) -> None:
    make_queue().enqueue("T", {})
    info = raw_db[job_model._get_collection_name()].index_information()
    assert info["mjq_unique"]["unique"] and info["mjq_schedule"]["unique"]
    assert "mjq_claim" in info and "mjq_lease" in info


def test_a_unique_index_that_cannot_be_created_fails_loudly(make_queue, raw_db, job_model) -> None:
    # Someone created an index of that name by hand, without uniqueness: unique_key would mean nothing.
    raw_db[job_model._get_collection_name()].create_index([("unique_key", 1)], name="mjq_unique")
    queue = make_queue()
    with pytest.raises(IndexSetupError, match="mjq_unique"):
        queue.enqueue("T", {}, unique_key="k")
    assert raw_db[job_model._get_collection_name()].count_documents({}) == 0


def test_duplicates_stored_before_the_unique_index_fail_loudly(make_queue, raw_db, job_model) -> None:
    # Jobs written by an earlier version that raced its index build: uniqueness cannot be had until cleaned up.
    raw_db[job_model._get_collection_name()].insert_many([{"unique_key": "k"}, {"unique_key": "k"}])
    with pytest.raises(IndexSetupError, match="duplicate"):
        make_queue().enqueue("T", {}, unique_key="other")


def test_indexes_are_created_once_per_process_and_model(make_queue, job_model, monkeypatch) -> None:
    created: list[type] = []
    original = job_model.ensure_indexes.__func__

    def counted(cls: type) -> None:
        created.append(cls)
        original(cls)

    monkeypatch.setattr(job_model, "ensure_indexes", classmethod(counted))
    queues = [make_queue() for _ in range(4)]
    start = threading.Barrier(8)

    def enqueue(i: int) -> None:
        start.wait(timeout=30)
        queues[i % 4].enqueue("T", {"n": i})

    threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert job_model.objects.count() == 8
    assert created == [job_model]
    job_model.drop_collection()  # a dropped collection gets its indexes again at the next use
    queues[0].enqueue("T", {})
    assert created == [job_model, job_model]


def test_a_model_whose_database_is_down_does_not_hold_up_another_models_first_use(make_queue, job_model) -> None:
    """Index preparation waits per model: one unreachable database must not stall every other queue."""
    import mongoengine

    from mongo_job_queue import BaseJob, create_job_queue

    mongoengine.register_connection(
        "mjq_cold_down",
        host="mongodb://127.0.0.1:1/down",
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=20_000,
        connect=False,
    )

    class ColdDownJob(BaseJob):
        meta = {"collection": "jobs", "db_alias": "mjq_cold_down"}

    down = create_job_queue(job_model=ColdDownJob, config={"sync_clock": False})
    blocked = threading.Thread(target=lambda: _swallow(lambda: down.enqueue("T", {})), daemon=True)
    blocked.start()
    blocked.join(timeout=1.0)  # it retries its server selection (db_timeout_ms each) for much longer
    assert blocked.is_alive()
    healthy = make_queue()
    started = time.monotonic()
    healthy.enqueue("T", {})  # a fresh collection: its first use prepares its indexes
    assert time.monotonic() - started < 10, "the healthy model waited for the unreachable one"
    mongoengine.disconnect(alias="mjq_cold_down")


def test_a_model_whose_index_build_stalls_does_not_hold_up_another_models_first_use(
    mongodb_uri, db_name, make_queue, job_model, failpoint
) -> None:
    """The first use holds its model's lock for the whole index build; another model's first use goes on."""
    import mongoengine

    from mongo_job_queue import BaseJob, create_job_queue
    from mongo_job_queue.store.indexes import _model_lock

    mongoengine.register_connection(
        "mjq_cold_stalled", host=mongodb_uri, db=db_name, uuidRepresentation="standard", appname="mjq-stalled"
    )

    class StalledJob(BaseJob):
        meta = {"collection": "stalled_jobs", "db_alias": "mjq_cold_stalled"}

    failpoint(["createIndexes"], 1, appName="mjq-stalled", blockConnection=True, blockTimeMS=6_000)
    stalled = create_job_queue(job_model=StalledJob, config={"sync_clock": False})
    building = threading.Thread(target=lambda: _swallow(lambda: stalled.enqueue("T", {})), daemon=True)
    building.start()
    try:
        deadline = time.monotonic() + 10
        while not _model_lock(StalledJob).locked():  # inside its index build, the server holding createIndexes
            assert time.monotonic() < deadline, "the stalled model never started its index build"
            time.sleep(0.01)
        healthy = make_queue()
        started = time.monotonic()
        healthy.enqueue("T", {})  # a fresh collection: its first use prepares its indexes
        assert time.monotonic() - started < 3, "the healthy model waited for the stalled one's index build"
        assert building.is_alive()
    finally:
        building.join(timeout=30)
        StalledJob.drop_collection()
        mongoengine.disconnect(alias="mjq_cold_stalled")


def _swallow(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass
