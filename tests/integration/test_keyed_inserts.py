"""Keyed mode: with a declared shard key, unique jobs and schedule fires are guarded by key documents.

A sharded collection cannot keep ``mjq_unique`` and ``mjq_schedule`` unique
(docs/scaling.rst), so each key is a document of ``<jobs>_keys`` inserted
with its job in one transaction (store/keyed_insert.py). The guarantees are
those of the unique indexes: one holder per key, the holder returned and
nothing written when refused, idempotent under a lost reply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from mongoengine import StringField
from pymongo.errors import AutoReconnect

from mongo_job_queue import BaseJob, InvalidJobError, create_job_queue
from mongo_job_queue.store import key_sweep, keyed_insert
from mongo_job_queue.store.indexes import forget_prepared
from mongo_job_queue.workflows import chain

from .models import ALIAS

pytestmark = pytest.mark.integration

COLLECTION = "keyed_jobs"


class KeyedJob(BaseJob):
    organization = StringField()
    meta = {
        "collection": COLLECTION,
        "db_alias": ALIAS,
        "shard_key": ("queue", "id"),
        # An app's own unique index, to refuse an enqueue.
        "indexes": [{"name": "app_ticket", "fields": ["organization"], "unique": True, "sparse": True}],
    }


class PlainJob(BaseJob):
    """The same collection before the shard key was declared."""

    organization = StringField()
    meta = {"collection": COLLECTION, "db_alias": ALIAS}


@pytest.fixture
def fresh(db_name: str, raw_db: Any) -> Iterator[Any]:
    def drop() -> None:
        for name in raw_db.list_collection_names():
            if name == COLLECTION or name.startswith(f"{COLLECTION}_"):
                raw_db.drop_collection(name)
        forget_prepared(KeyedJob)
        forget_prepared(PlainJob)

    drop()
    yield raw_db
    drop()


@pytest.fixture
def make(fresh: Any) -> Iterator[Any]:
    made: list[Any] = []

    def build(model: type[BaseJob] = KeyedJob) -> Any:
        queue = create_job_queue(job_model=model)
        made.append(queue)
        return queue

    yield build
    for queue in made:
        queue.stop(timeout=10)


def key_docs(raw_db: Any) -> list[dict[str, Any]]:
    return list(raw_db[f"{COLLECTION}_keys"].find())


def test_a_unique_enqueue_returns_the_holder_and_writes_one_key_document(make, fresh) -> None:
    queue = make()
    first = queue.enqueue("T", {"n": 1}, unique_key="k", queue="alpha")
    again = queue.enqueue("T", {"n": 2}, unique_key="k", queue="beta")
    assert again.id == first.id and again.data == {"n": 1}
    assert fresh[COLLECTION].count_documents({}) == 1
    [doc] = key_docs(fresh)
    assert doc["_id"] == {"u": "k"} and doc["job"] == first.id
    assert doc["where"] == {"queue": "alpha", "_id": first.id}  # the holder is read by its shard key
    info = fresh[COLLECTION].index_information()
    assert not info["mjq_unique"].get("unique") and info["mjq_unique"]["sparse"]
    assert not info["mjq_schedule"].get("unique")
    queue.enqueue("T", {})  # a plain job writes no key document
    assert len(key_docs(fresh)) == 1


def test_concurrent_enqueues_of_one_key_insert_one_job(make, fresh) -> None:
    queues = [make() for _ in range(4)]
    start = threading.Barrier(16)

    def enqueue(i: int) -> Any:
        start.wait(timeout=30)
        return queues[i % 4].enqueue("report", {"n": i}, unique_key="report:acme", queue=f"q{i % 3}")

    with ThreadPoolExecutor(16) as pool:
        jobs = list(pool.map(enqueue, range(16)))
    assert fresh[COLLECTION].count_documents({"type": "report"}) == 1
    assert len({job.id for job in jobs}) == 1
    assert [d["job"] for d in key_docs(fresh)] == [jobs[0].id]


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "no-overlap"])
def test_schedule_fires_from_several_queues_make_one_job_per_fire_time(make, fresh, overlap) -> None:
    queues = [make() for _ in range(4)]
    for queue in queues:
        queue.schedule("hourly", "0 * * * *", "T", {}, overlap=overlap)
    gate = threading.Barrier(len(queues), timeout=30)

    def tick_all(now: datetime) -> list[Any]:
        fires: list[Any] = []

        def tick(queue: Any) -> None:
            gate.wait()
            fires.extend(queue.fire_schedules(now))

        threads = [threading.Thread(target=tick, args=(q,)) for q in queues]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return fires

    tick_all(datetime(2026, 1, 1, 9, 30))  # first sight: nothing due
    for hour in (10, 11, 12):
        # Without overlap, 11:00 and 12:00 are skipped: the job of 10:00 holds the overlap key.
        expected = 1 if overlap or hour == 10 else 0
        assert sum(f.enqueued for f in tick_all(datetime(2026, 1, 1, hour, 0, 1))) == expected
    fired = sorted(d["fire_time"] for d in fresh[COLLECTION].find({"schedule": "hourly"}))
    assert fired == [datetime(2026, 1, 1, h) for h in ((10, 11, 12) if overlap else (10,))]
    # A skipped fire's key document went with its refused insert.
    assert sorted(d["_id"]["t"] for d in key_docs(fresh) if "s" in d["_id"]) == fired


def test_a_refused_enqueue_leaves_neither_key_document_nor_job(make, fresh) -> None:
    queue = make()
    queue.enqueue("T", {}, organization="acme")
    with pytest.raises(InvalidJobError, match="unique index"):
        queue.enqueue("T", {}, unique_key="k", organization="acme")
    with pytest.raises(InvalidJobError):
        queue.enqueue("T", {}, unique_key="k", unique_for_ms=-1)
    assert key_docs(fresh) == []
    assert fresh[COLLECTION].count_documents({}) == 1
    assert queue.enqueue("T", {}, unique_key="k").unique_key == "k"  # the key was never taken


@pytest.mark.parametrize(
    ("commands", "times", "fault"),
    [
        (["commitTransaction"], 1, {"closeConnection": True}),
        (["commitTransaction"], 3, {"closeConnection": True}),
        (["insert"], 2, {"errorCode": 91, "errorLabels": ["TransientTransactionError"]}),
        (["insert"], 1, {"closeConnection": True}),
    ],
    ids=["commit-lost-once", "commit-lost-thrice", "insert-transient", "insert-lost"],
)
def test_a_lost_reply_neither_duplicates_nor_loses(make, fresh, failpoint, commands, times, fault) -> None:
    queue = make()
    queue.enqueue("T", {})  # the collection prepared before the fault
    failpoint(commands, times, **fault)
    job = queue.enqueue("T", {"n": 1}, unique_key="k")
    assert fresh[COLLECTION].count_documents({"unique_key": "k"}) == 1
    assert fresh[COLLECTION].find_one({"unique_key": "k"})["_id"] == job.id
    assert [d["job"] for d in key_docs(fresh)] == [job.id]
    assert queue.enqueue("T", {"n": 2}, unique_key="k").id == job.id


def test_a_commit_that_applied_but_whose_reply_was_lost_is_recognised(make, fresh, monkeypatch) -> None:
    queue = make()
    real = keyed_insert.KeyedInsert._insert_once
    lost = []

    def applied_then_lost(self: Any, doc: Any, ids: Any) -> Any:
        taken = real(self, doc, ids)
        if not lost:
            lost.append(doc["_id"])
            raise AutoReconnect("the reply of the commit was lost")
        return taken

    monkeypatch.setattr(keyed_insert.KeyedInsert, "_insert_once", applied_then_lost)
    job = queue.enqueue("T", {}, unique_key="k")
    assert lost == [job.id]
    assert fresh[COLLECTION].count_documents({}) == 1
    assert [d["job"] for d in key_docs(fresh)] == [job.id]


def test_a_released_key_can_be_taken_again(make, fresh) -> None:
    queue = make()
    jobs = fresh[COLLECTION]
    first = queue.enqueue("T", {}, unique_key="k", unique_for_ms=60_000)
    done = {"status": "completed", "finished_at": datetime(2026, 1, 1)}
    jobs.update_one({"_id": first.id}, {"$set": done})
    assert queue.enqueue("T", {}, unique_key="k").id == first.id  # finished, but within its window
    jobs.update_one({"_id": first.id}, {"$set": {"unique_until": datetime(2000, 1, 1)}})
    second = queue.enqueue("T", {}, unique_key="k")  # the window is over: released
    assert second.id != first.id
    assert "unique_key" not in jobs.find_one({"_id": first.id})
    jobs.delete_one({"_id": second.id})  # retention, or by hand: the key document stays behind
    assert [d["job"] for d in key_docs(fresh)] == [second.id]
    third = queue.enqueue("T", {}, unique_key="k")
    assert third.id not in (first.id, second.id)
    assert [d["job"] for d in key_docs(fresh)] == [third.id]
    # A key document whose job no longer carries the key is free as well.
    jobs.update_one({"_id": third.id}, {"$unset": {"unique_key": ""}})
    assert queue.enqueue("T", {}, unique_key="k").id != third.id


def test_jobs_stored_before_the_shard_key_was_declared_keep_their_keys(make, fresh) -> None:
    plain = make(PlainJob)
    held = plain.enqueue("T", {}, unique_key="k")
    plain.schedule("hourly", "0 * * * *", "T", {})
    plain.fire_schedules(datetime(2026, 1, 1, 9, 30))
    assert [f.enqueued for f in plain.fire_schedules(datetime(2026, 1, 1, 10, 0, 1))] == [True]
    assert fresh[COLLECTION].index_information()["mjq_unique"]["unique"]  # made by the replica-set days
    assert key_docs(fresh) == []

    queue = make(KeyedJob)
    assert queue.enqueue("T", {"n": 2}, unique_key="k").id == held.id
    ten = datetime(2026, 1, 1, 10)
    spec = {"job_type": "T", "data": {}, "run_at": ten}
    _, holder = queue._enqueuer.enqueue_fire(spec, {}, schedule="hourly", fire_time=ten)  # a late tick elsewhere
    assert holder is not None and holder["_id"] == fresh[COLLECTION].find_one({"schedule": "hourly"})["_id"]
    ids = sorted(repr(d["_id"]) for d in key_docs(fresh))
    assert ids == sorted([repr({"u": "k"}), repr({"s": "hourly", "t": datetime(2026, 1, 1, 10)})])
    assert fresh[COLLECTION].index_information()["mjq_unique"]["unique"]  # kept: stricter, fine until sharded
    assert queue.enqueue("T", {}, unique_key="other").unique_key == "other"


def test_a_key_of_a_job_stored_without_a_key_document_is_judged_by_the_unique_index(make, fresh) -> None:
    """A process still without the shard key inserts after the backfill: its job has no key document.

    (A process without the shard key cannot start on a collection made in keyed mode: its unique
    indexes cannot be created over the non-unique ones of the same name.)
    """
    plain = make(PlainJob)
    plain.enqueue("T", {})  # the collection of the replica-set days, its indexes unique
    queue = make(KeyedJob)
    queue.enqueue("T", {})  # prepared (and backfilled) now
    late = plain.enqueue("T", {}, unique_key="k")
    assert queue.enqueue("T", {}, unique_key="k").id == late.id
    assert key_docs(fresh) == []
    fresh[COLLECTION].update_one(
        {"_id": late.id}, {"$set": {"status": "completed", "finished_at": datetime(2026, 1, 1)}}
    )
    taken = queue.enqueue("T", {}, unique_key="k")
    assert taken.id != late.id
    assert [d["job"] for d in key_docs(fresh)] == [taken.id]


def test_the_sweep_deletes_old_key_documents_whose_job_is_gone(make, fresh) -> None:
    queue = make()
    kept = queue.enqueue("T", {}, unique_key="kept")
    gone = queue.enqueue("T", {}, unique_key="gone")
    young = queue.enqueue("T", {}, unique_key="young")
    fresh[COLLECTION].delete_many({"_id": {"$in": [gone.id, young.id]}})
    now = datetime.utcnow() + timedelta(minutes=1)
    old = now - key_sweep.SWEEP_AGE - timedelta(minutes=1)
    fresh[f"{COLLECTION}_keys"].update_many({"_id": {"$in": [{"u": "kept"}, {"u": "gone"}]}}, {"$set": {"at": old}})
    assert queue.store.keys.step(now) == key_sweep.SWEEP_INTERVAL_S  # the worker's maintenance step: one batch, all
    assert queue.store.keys.run_once(now) == 0
    assert sorted(d["_id"]["u"] for d in key_docs(fresh)) == ["kept", "young"]
    assert queue.enqueue("T", {}, unique_key="kept").id == kept.id


def test_a_workflow_takes_its_keys_all_or_nothing(make, fresh) -> None:
    queue = make()
    held = queue.enqueue("T", {}, unique_key="held")
    with pytest.raises(InvalidJobError, match="held by job"):
        queue.enqueue_graph(chain(queue.job("A", {}, unique_key="new"), queue.job("B", {}, unique_key="held")))
    with pytest.raises(InvalidJobError, match="two jobs of the workflow"):
        queue.enqueue_graph(chain(queue.job("A", {}, unique_key="twice"), queue.job("B", {}, unique_key="twice")))
    assert fresh[COLLECTION].count_documents({}) == 1
    assert [d["job"] for d in key_docs(fresh)] == [held.id]
    fresh[COLLECTION].delete_one({"_id": held.id})  # its key document stays behind, and is released
    graph = chain(queue.job("A", {}, unique_key="new"), queue.job("B", {}, unique_key="held"))
    by_type = {job.type: job.id for job in queue.enqueue_graph(graph)}
    assert sorted((d["_id"]["u"], d["job"]) for d in key_docs(fresh)) == [("held", by_type["B"]), ("new", by_type["A"])]
    assert queue.enqueue("T", {}, unique_key="held").id == by_type["B"]


def test_a_fire_time_is_held_by_its_job_whatever_its_status_and_freed_when_it_is_gone(make, fresh) -> None:
    queue = make()
    ten = datetime(2026, 1, 1, 10)
    spec = {"job_type": "T", "data": {}, "run_at": ten}
    first, holder = queue._enqueuer.enqueue_fire(spec, {}, schedule="s", fire_time=ten)
    assert holder is None
    fresh[COLLECTION].update_one({"_id": first["_id"]}, {"$set": {"status": "completed", "finished_at": ten}})
    _, holder = queue._enqueuer.enqueue_fire(spec, {}, schedule="s", fire_time=ten)
    assert holder is not None and holder["_id"] == first["_id"]
    fresh[COLLECTION].delete_one({"_id": first["_id"]})  # retention
    again, holder = queue._enqueuer.enqueue_fire(spec, {}, schedule="s", fire_time=ten)
    assert holder is None and again["_id"] != first["_id"]
    assert [d["job"] for d in key_docs(fresh)] == [again["_id"]]


def test_a_lost_reply_is_recognised_even_if_the_key_moved_on_meanwhile(make, fresh, monkeypatch) -> None:
    """The commit applied, the job ran and released its key, another job took it; then the retry."""
    queue = make()
    other = make()
    real = keyed_insert.KeyedInsert._insert_once
    lost: list[Any] = []

    def applied_then_lost(self: Any, doc: Any, ids: Any) -> Any:
        taken = real(self, doc, ids)
        if not lost:
            lost.append(doc["_id"])
            done = {"status": "completed", "finished_at": datetime(2026, 1, 1)}
            fresh[COLLECTION].update_one({"_id": doc["_id"]}, {"$set": done})
            monkeypatch.setattr(keyed_insert.KeyedInsert, "_insert_once", real)
            lost.append(other.enqueue("T", {}, unique_key="k").id)
            monkeypatch.setattr(keyed_insert.KeyedInsert, "_insert_once", applied_then_lost)
            raise AutoReconnect("the reply of the commit was lost")
        return taken

    monkeypatch.setattr(keyed_insert.KeyedInsert, "_insert_once", applied_then_lost)
    job = queue.enqueue("T", {}, unique_key="k")
    assert lost[0] == job.id and lost[1] != job.id  # this enqueue's own job, not the later holder
    assert [d["job"] for d in key_docs(fresh)] == [lost[1]]


def test_the_sweep_keeps_the_key_of_a_job_the_app_moved_to_another_shard_key_value(make, fresh) -> None:
    # The sweep looked for the job under the key values its key document keeps: a job moved to another
    # queue was "gone", its key document deleted, and the next enqueue made a second holder (review).
    queue = make()
    first = queue.enqueue("T", {}, unique_key="k", queue="alpha")
    fresh[COLLECTION].update_one({"_id": first.id}, {"$set": {"queue": "beta"}})  # the app moves the pending job
    now = datetime.utcnow() + key_sweep.SWEEP_AGE + timedelta(minutes=1)
    assert queue.store.keys.run_once(now) == 0
    assert queue.enqueue("T", {}, unique_key="k", queue="alpha").id == first.id
    assert fresh[COLLECTION].count_documents({"unique_key": "k"}) == 1


def test_the_backfill_gives_a_key_released_by_a_process_without_the_shard_key_to_its_new_holder(make, fresh) -> None:
    # During the rolling deploy a keyed process inserts j1; j1 ends; a process without the shard key
    # releases the key (unsets it on j1) and inserts j2, leaving the key document naming j1. The backfill
    # took any key document present as right: j2 had none, and once the unique indexes were dropped
    # the next enqueue released j1's document and inserted a second holder beside j2 (review).
    plain = make(PlainJob)
    plain.enqueue("T", {})
    keyed = make()
    j1 = keyed.enqueue("T", {}, unique_key="k")
    fresh[COLLECTION].update_one(
        {"_id": j1.id},
        {"$set": {"status": "completed", "finished_at": datetime(2026, 1, 1), "unique_until": datetime(2000, 1, 1)}},
    )
    j2 = plain.enqueue("T", {}, unique_key="k")
    assert j2.id != j1.id
    plain.stop(timeout=10)
    keyed.ensure_indexes()  # the migration's backfill, once no process without the key runs
    assert fresh[f"{COLLECTION}_keys"].find_one({"_id": {"u": "k"}})["job"] == j2.id
    fresh[COLLECTION].drop_index("mjq_unique")
    fresh[COLLECTION].drop_index("mjq_schedule")
    forget_prepared(KeyedJob)
    keyed.ensure_indexes()  # recreated without unique
    assert not fresh[COLLECTION].index_information()["mjq_unique"].get("unique")
    assert keyed.enqueue("T", {}, unique_key="k").id == j2.id
    assert fresh[COLLECTION].count_documents({"unique_key": "k"}) == 1
