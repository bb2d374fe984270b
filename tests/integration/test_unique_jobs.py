"""Unique jobs over the wire: one unfinished job per key, whatever the concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mongo_job_queue import InvalidJobError

pytestmark = pytest.mark.integration


def test_concurrent_enqueues_of_one_key_produce_one_job(make_queue, job_model) -> None:
    queues = [make_queue() for _ in range(4)]  # as many request handlers, each with its queue object
    start = threading.Barrier(16)

    def enqueue(i: int):
        start.wait(timeout=30)
        return queues[i % 4].enqueue("report", {"n": i}, unique_key="report:acme")

    with ThreadPoolExecutor(16) as pool:
        jobs = list(pool.map(enqueue, range(16)))
    assert job_model.objects(type="report").count() == 1
    assert len({job.id for job in jobs}) == 1
    assert jobs[0].unique_key == "report:acme"


def test_a_finished_job_releases_its_key(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    first = queue.enqueue("T", {}, unique_key="k")
    assert queue.enqueue("T", {"other": 1}, unique_key="k").id == first.id
    assert queue.enqueue("T", {}, unique_key="other-key").id != first.id
    queue.enqueue("T", {})  # jobs without a key are not affected
    queue.enqueue("T", {})
    assert queue.drain() == 4
    second = queue.enqueue("T", {}, unique_key="k")
    assert second.id != first.id and second.status == "pending"
    assert job_model.objects(unique_key="k").count() == 1  # the key moved to the new job
    assert queue.get_job(first.id).status == "completed"


def test_a_cancelled_or_failed_job_releases_its_key_too(make_queue, job_model) -> None:
    queue = make_queue()
    first = queue.enqueue("T", {}, unique_key="k", delay_ms=60_000)
    assert queue.cancel_job(first.id)
    assert queue.enqueue("T", {}, unique_key="k").id != first.id


def test_unique_for_ms_keeps_the_key_reserved_after_the_job_finished(make_queue, job_model) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: "done")
    first = queue.enqueue("T", {}, unique_key="daily", unique_for_ms=60_000)
    queue.drain()
    again = queue.enqueue("T", {}, unique_key="daily", unique_for_ms=60_000)
    assert again.id == first.id and again.status == "completed"
    # Once the window is over, the next enqueue takes the key.
    job_model.objects(id=first.id).update(set__unique_until=queue.store.now())
    assert queue.enqueue("T", {}, unique_key="daily").id != first.id
    assert job_model.objects.count() == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"unique_key": ""}, "unique_key must be"),
        ({"unique_key": 5}, "unique_key must be"),
        ({"unique_key": "k", "unique_for_ms": 0}, "unique_for_ms must be"),
        ({"unique_for_ms": 1000}, "needs a unique_key"),
    ],
)
def test_bad_unique_arguments_write_nothing(make_queue, job_model, kwargs, match) -> None:
    with pytest.raises(InvalidJobError, match=match):
        make_queue().enqueue("T", {}, **kwargs)
    assert job_model.objects.count() == 0


def test_enqueue_many_refuses_unique_keys(make_queue, job_model) -> None:
    with pytest.raises(InvalidJobError, match=r"jobs\[1\]: unique_key"):
        make_queue().enqueue_many([{"job_type": "T"}, {"job_type": "T", "unique_key": "k"}])
    assert job_model.objects.count() == 0


def test_a_collection_dropped_outside_the_process_gets_its_unique_index_back(make_queue, job_model, raw_db) -> None:
    queue = make_queue()
    queue.enqueue("T", {}, unique_key="k")
    raw_db.drop_collection(job_model._get_collection_name())  # mongosh, or another process
    first = queue.enqueue("T", {}, unique_key="k")
    assert queue.enqueue("T", {}, unique_key="k").id == first.id
    assert job_model.objects(unique_key="k").count() == 1
    assert {"mjq_unique", "mjq_schedule"} <= set(raw_db[job_model._get_collection_name()].index_information())


def test_a_duplicate_written_into_a_re_created_bare_collection_is_found_not_doubled(
    make_queue, job_model, raw_db
) -> None:
    queue = make_queue()
    held = queue.enqueue("T", {}, unique_key="k")
    stored = raw_db[job_model._get_collection_name()].find_one({"_id": held.id})
    raw_db.drop_collection(job_model._get_collection_name())
    raw_db[job_model._get_collection_name()].insert_one(stored)  # another process, before any index exists
    assert queue.enqueue("T", {}, unique_key="k").id == held.id
    assert [j.id for j in job_model.objects(unique_key="k")] == [held.id]


def test_a_schedule_fire_after_an_outside_drop_is_still_single(make_queue, job_model, raw_db) -> None:
    from datetime import datetime

    queue = make_queue()
    queue.enqueue("warm-up", {})

    def fire() -> dict:
        doc = queue._enqueuer.builder.build(
            {"job_type": "T", "data": {}, "queue": "default", "priority": 0}, {}, queue.store.now()
        )
        doc.update(schedule="nightly", fire_time=datetime(2030, 1, 1))
        return doc

    raw_db.drop_collection(job_model._get_collection_name())
    first = fire()
    assert queue.store.jobs.insert(first) is None
    holder = queue.store.jobs.insert(fire())
    assert holder is not None and holder["_id"] == first["_id"]
    assert job_model.objects(schedule="nightly").count() == 1
