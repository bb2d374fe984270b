"""Batches with callbacks over the wire: each callback fires exactly once, the counts match the jobs."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from helpers import wait_until

from mongo_job_queue import BatchSealedError, InvalidBatchError, InvalidJobError, Middleware
from mongo_job_queue.clock import utcnow

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_batches(job_model) -> None:
    job_model._get_db().drop_collection(f"{job_model._get_collection_name()}_batches")


def callbacks_of(raw_db, batch_id) -> list[tuple[str, Any]]:
    """The callback jobs stored for a batch: (event, status), one per stored job."""
    docs = raw_db.jobs.find({"batch_callback.batch_id": batch_id}, sort=[("_id", 1)])
    return sorted((d["batch_callback"]["event"], d["type"]) for d in docs)


def finished(queue, batch_id):
    return wait_until(
        lambda: (info := queue.get_batch(batch_id)) is not None and info.finished and info,
        timeout=30,
        what=f"batch {batch_id} finished",
    )


CALLBACKS = {"on_complete": ("DONE", {"n": 1}), "on_success": ("OK", None), "on_failure": ("BAD", {})}


def test_a_one_job_batch_fires_complete_and_success(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    with queue.batch(**CALLBACKS, organization="acme") as batch:
        job = batch.enqueue("T", {"x": 1})
    assert job.batch_id == batch.id and job.organization == "acme"
    queue.start_polling()
    info = finished(queue, batch.id)
    assert info.counts == {"completed": 1} and info.fired == ("success", "complete")
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("success", "OK")]
    done = raw_db.jobs.find_one({"_id": info.callbacks["complete"]})
    assert done["data"] == {"n": 1} and done["organization"] == "acme" and "batch_id" not in done


def test_an_empty_sealed_batch_finishes_at_once(make_queue, raw_db) -> None:
    queue = make_queue()
    batch = queue.batch(**CALLBACKS)
    assert queue.get_batch(batch.id).state == "open"
    batch.seal()
    info = queue.get_batch(batch.id)
    assert info.finished and info.total == 0 and info.fired == ("success", "complete")
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("success", "OK")]


def test_an_open_batch_never_finishes_and_its_failure_fires_at_once(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    queue.register_handler("BOOM", lambda job: 1 / 0)
    batch = queue.batch(**CALLBACKS)
    batch.enqueue("T")
    batch.enqueue("BOOM", max_retries=0)
    queue.start_polling()
    wait_until(lambda: queue.get_batch(batch.id).fired == ("failure",), timeout=30, what="on_failure")
    info = queue.get_batch(batch.id)
    assert info.counts == {"completed": 1, "failed": 1} and info.state == "open"
    assert callbacks_of(raw_db, batch.id) == [("failure", "BAD")]
    # Every job is final, and the reconciler (open batches after 10 min) counts it: still open, nothing more fires.
    assert queue._batches.tracker.run_once(queue.store.now() + timedelta(minutes=1)) == 0
    assert queue._batches.tracker.run_once(queue.store.now() + timedelta(minutes=11)) == 1
    assert queue.get_batch(batch.id).state == "open"
    assert callbacks_of(raw_db, batch.id) == [("failure", "BAD")]
    batch.seal()
    info = finished(queue, batch.id)
    assert info.fired == ("failure", "complete")  # never success: a job failed
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("failure", "BAD")]


def test_a_job_that_exhausts_its_retries_fires_failure_once_and_complete(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    queue.register_handler("BOOM", lambda job: 1 / 0)
    with queue.batch(**CALLBACKS) as batch:
        batch.enqueue_many([{"job_type": "T"}, {"job_type": "BOOM", "max_retries": 2}, {"job_type": "BOOM"}])
    queue.start_polling()
    info = finished(queue, batch.id)
    assert info.counts == {"completed": 1, "failed": 2}
    assert raw_db.jobs.find_one({"batch_id": batch.id, "type": "BOOM", "max_retries": 2})["attempts"] == 3
    assert info.fired == ("failure", "complete")
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("failure", "BAD")]  # two failures, one on_failure


def test_a_batch_with_a_cancelled_job_completes_without_success_or_failure(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    with queue.batch(**CALLBACKS) as batch:
        batch.enqueue("T")
        later = batch.enqueue("T", delay_ms=60_000)
    queue.start_polling()
    wait_until(lambda: queue.get_batch(batch.id).counts == {"completed": 1, "pending": 1}, timeout=30)
    assert queue.cancel_job(later.id)
    info = finished(queue, batch.id)
    assert info.counts == {"completed": 1, "cancelled": 1} and info.fired == ("complete",)
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE")]


def test_cancel_batch_cancels_its_jobs_seals_it_and_fires_complete(make_queue, raw_db) -> None:
    queue = make_queue()
    batch = queue.batch(**CALLBACKS)
    batch.enqueue_many([{"job_type": "T", "delay_ms": 60_000}] * 3)
    other = queue.enqueue("T", delay_ms=60_000)
    assert queue.cancel_batch(str(batch.id)) == {"cancelled": 3, "requested": 0}
    info = finished(queue, batch.id)
    assert info.counts == {"cancelled": 3} and info.fired == ("complete",)
    assert queue.get_job(other.id).status == "pending"  # not of the batch
    with pytest.raises(BatchSealedError):
        batch.enqueue("T")


def test_retry_batch_reopens_it_and_never_fires_a_callback_twice(make_queue, raw_db) -> None:
    queue = make_queue()
    broken = threading.Event()
    broken.set()

    def flaky(job) -> None:
        if broken.is_set():
            raise RuntimeError("down")

    queue.register_handler("T", flaky)
    with queue.batch(**CALLBACKS) as batch:
        batch.enqueue_many([{"job_type": "T", "max_retries": 0}] * 2)
    queue.start_polling()
    info = finished(queue, batch.id)
    assert info.counts == {"failed": 2} and info.fired == ("failure", "complete")
    broken.clear()
    assert queue.retry_batch(batch.id) == 2
    info = wait_until(
        lambda: (i := queue.get_batch(batch.id)).finished and i.counts == {"completed": 2} and i, timeout=30
    )
    # on_success fires now that every job completed; on_complete and on_failure fired before and never again.
    assert info.fired == ("failure", "success", "complete")
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("failure", "BAD"), ("success", "OK")]
    assert queue.retry_batch(batch.id) == 0


def test_a_retry_between_a_checks_counts_and_its_finish_still_fires_success(make_queue, raw_db) -> None:
    """A check counts 'all final', retry_batch requeues the failed job, then the check's finish lands.

    Before the batch's ``gen`` the finish landed: the batch was finished with a pending job, and
    on_success never fired when that job completed.
    """
    worker, operator = make_queue(), make_queue()
    broken = threading.Event()
    broken.set()

    def flaky(job) -> None:
        if broken.is_set():
            raise RuntimeError("down")

    for queue in (worker, operator):
        queue.register_handler("T", flaky)
    with worker.batch(**CALLBACKS) as batch:
        batch.enqueue("T", max_retries=0)
    real_finish = worker.store.batches.finish

    def retried_meanwhile(*args: Any) -> bool:
        broken.clear()
        assert operator.retry_batch(batch.id) == 1  # another process, between the counts and the finish
        return real_finish(*args)

    worker.store.batches.finish = retried_meanwhile  # type: ignore[method-assign]
    worker.run_once()
    worker.store.batches.finish = real_finish  # type: ignore[method-assign]
    assert worker.get_batch(batch.id).state == "sealed"
    operator.run_once()
    info = operator.get_batch(batch.id)
    assert info.finished and info.counts == {"completed": 1}
    assert info.fired == ("failure", "success", "complete")


def test_the_last_two_jobs_finishing_at_once_on_two_workers_fire_one_complete(make_queue, raw_db) -> None:
    """20 rounds: two workers end a batch's two jobs together (a barrier), so both see it done and both fire."""
    gate = threading.Barrier(2, timeout=30)
    workers = [make_queue(concurrency=1, poll_interval_max_ms=50) for _ in range(2)]
    for worker in workers:
        worker.register_handler("T", lambda job: gate.wait())
        worker.start_polling()
    producer = workers[0]
    rounds = 20  # the barrier forces the race in every round; 50 took 18 s
    ids = []
    for _ in range(rounds):
        with producer.batch(on_complete={"job_type": "DONE", "queue": "callbacks"}) as batch:
            batch.enqueue_many([{"job_type": "T"}, {"job_type": "T"}])
        ids.append(batch.id)
        finished(producer, batch.id)
    for batch_id in ids:
        assert callbacks_of(raw_db, batch_id) == [("complete", "DONE")]
        assert producer.get_batch(batch_id).counts == {"completed": 2}
    # Both workers ran a job of every batch (the barrier), so both ended it and both were told.
    ran_by = {doc["lease_owner"]["worker_id"] for doc in raw_db.jobs.find({"type": "T"})}
    assert len(ran_by) == 2


# -- crashes between a job's final write and the batch's bookkeeping ------------------------


def _lose_notices(monkeypatch, queue) -> None:
    """The worker's check after each final write fails, as if it died right after the write."""

    def crashed(batch_id, **kwargs):
        raise RuntimeError("killed after the final write")

    monkeypatch.setattr(queue._batches.tracker, "check", crashed)


def test_a_lost_notice_is_caught_by_the_reconciler_which_fires_once(make_queue, raw_db, monkeypatch) -> None:
    worker = make_queue()
    _lose_notices(monkeypatch, worker)
    worker.register_handler("T", lambda job: None)
    other = make_queue()  # another process's reconciler
    with other.batch(**CALLBACKS) as batch:
        batch.enqueue_many([{"job_type": "T"}] * 3)
    worker.start_polling()
    wait_until(lambda: other.get_batch(batch.id).counts == {"completed": 3}, timeout=30, what="jobs done")
    worker.stop(timeout=10)
    assert other.get_batch(batch.id).state == "sealed" and callbacks_of(raw_db, batch.id) == []
    tracker = other._batches.tracker
    assert tracker.run_once(other.store.now()) == 0  # touched recently: not stale yet
    later = other.store.now() + timedelta(minutes=1)
    assert tracker.run_once(later) == 1
    info = other.get_batch(batch.id)
    assert info.finished and info.fired == ("success", "complete")
    assert tracker.run_once(later + timedelta(minutes=1)) == 0  # finished: never swept again
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("success", "OK")]


def test_abandoned_open_batches_neither_delay_a_sealed_one_nor_stay_unfinishable(make_queue, raw_db) -> None:
    """Before, one sweep took the 100 least recently touched unfinished batches, open ones included."""
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    abandoned = []
    for _ in range(101):  # openers killed inside `with queue.batch()`: open batches, their jobs done
        batch = queue.batch(on_complete=("DONE", None))
        batch.enqueue("T", delay_ms=60_000)
        abandoned.append(batch.id)
    queue.store.collection.update_many({"batch_id": {"$in": abandoned}}, {"$set": {"status": "completed"}})
    with queue.batch(on_complete=("DONE", None)) as lost:  # a sealed one whose last notice was lost
        lost.enqueue("T", delay_ms=60_000)
    queue.store.collection.update_many({"batch_id": lost.id}, {"$set": {"status": "completed"}})
    tracker = queue._batches.tracker
    assert tracker.run_once(queue.store.now() + timedelta(minutes=1)) == 1  # the sealed one only
    assert queue.get_batch(lost.id).finished
    assert tracker.run_once(queue.store.now() + timedelta(minutes=11)) == 100  # open ones, rarely
    assert queue.get_batch(abandoned[0]).state == "open"
    queue.seal_batch(str(abandoned[0]))  # what an operator does (CLI: batches seal ID)
    info = queue.get_batch(abandoned[0])
    assert info.finished and info.fired == ("complete",)


def test_a_running_worker_reconciles_on_its_maintenance_thread(make_queue, raw_db, monkeypatch) -> None:
    monkeypatch.setattr("mongo_job_queue.batches.tracker.STALE_AFTER", timedelta(0))
    broken = make_queue()
    _lose_notices(monkeypatch, broken)
    broken.register_handler("T", lambda job: None)
    with make_queue().batch(**CALLBACKS) as batch:
        batch.enqueue("T")
    broken.start_polling()
    wait_until(lambda: broken.get_batch(batch.id).counts == {"completed": 1}, timeout=30)
    broken.stop(timeout=10)
    assert not broken.get_batch(batch.id).finished
    sweeper = make_queue(queues=["elsewhere"])  # a worker of another queue: its maintenance still sweeps
    sweeper.register_handler("OTHER", lambda job: None)
    sweeper.start_polling()
    info = finished(sweeper, batch.id)
    assert info.fired == ("success", "complete")
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("success", "OK")]


@pytest.mark.parametrize("crash", ["before the callback's insert", "after the callback's insert"])
def test_a_crash_while_firing_is_finished_by_the_reconciler_once(make_queue, raw_db, monkeypatch, crash) -> None:
    queue = make_queue()
    tracker = queue._batches.tracker
    crashes = []
    real_mark = queue.store.batches.mark_fired

    def die(*args: Any) -> None:
        if not crashes:
            crashes.append(args)
            raise RuntimeError(f"killed {crash}")

    if crash.startswith("before"):
        tracker.before_insert = die
    else:
        monkeypatch.setattr(queue.store.batches, "mark_fired", lambda *a: die(*a) or real_mark(*a))
    batch = queue.batch(on_complete={"job_type": "DONE", "queue": "callbacks"})
    batch.seal()  # sealed; the seal's own check fires, and dies (logged)
    assert crashes
    stored = callbacks_of(raw_db, batch.id)
    assert stored == ([] if crash.startswith("before") else [("complete", "DONE")])
    doc = raw_db.jobs_batches.find_one({"_id": batch.id})
    assert doc["state"] == "sealed" and "complete" in doc["firing"] and doc["fired"] == []
    assert tracker.run_once(queue.store.now() + timedelta(minutes=1)) == 1
    assert tracker.run_once(queue.store.now() + timedelta(minutes=2)) == 0
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE")]
    info = queue.get_batch(batch.id)
    assert info.finished and info.fired == ("complete",)


def test_a_firing_older_than_retention_is_recorded_without_a_second_insert(make_queue, raw_db, caplog) -> None:
    offset = timedelta(0)

    def clock():
        return utcnow() + offset

    queue = make_queue(clock=clock, sync_clock=False, retention_completed_ms=60_000)
    tracker = queue._batches.tracker
    tracker.before_insert = lambda *a: (_ for _ in ()).throw(RuntimeError("killed before the insert"))
    batch = queue.batch(on_complete={"job_type": "DONE", "queue": "callbacks"})
    batch.seal()
    tracker.before_insert = None
    # Longer ago than retention keeps a job: the callback may have been inserted, run and deleted since.
    offset = timedelta(minutes=2)
    assert tracker.run_once() == 1
    info = queue.get_batch(batch.id)
    assert info.finished and info.fired == ("complete",)
    assert callbacks_of(raw_db, batch.id) == []
    assert "longer ago than retention" in caplog.text


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "callbacks",
    [
        {"on_complete": "DONE"},
        {"on_complete": ("DONE",)},
        {"on_complete": ("DONE", "not a mapping")},
        {"on_success": ("", {})},
        {"on_failure": {"job_type": "BAD", "unique_key": "k"}},
        {"on_complete": {"data": {}}},
        {"on_complete": ("DONE", {"$bad": 1})},
        {"on_complete": ("DONE", {}), "no_such_field": 1},
    ],
)
def test_bad_callbacks_or_fields_are_refused_with_nothing_written(make_queue, raw_db, callbacks) -> None:
    queue = make_queue()
    with pytest.raises(InvalidBatchError):
        queue.batch(**callbacks)
    assert raw_db.jobs_batches.count_documents({}) == 0
    assert raw_db.jobs.count_documents({}) == 0


def test_adding_to_a_sealed_batch_is_refused_with_nothing_written(make_queue, raw_db) -> None:
    queue = make_queue()
    with queue.batch() as batch:
        batch.enqueue("T", delay_ms=60_000)
    with pytest.raises(BatchSealedError, match="sealed"):
        batch.add("T")
    # Another handle on the same batch (another process) is refused by the stored state.
    from mongo_job_queue import Batch

    again = Batch(queue._batches, batch.id, {})
    with pytest.raises(BatchSealedError, match="sealed"):
        again.enqueue_many([{"job_type": "T"}])
    assert raw_db.jobs.count_documents({}) == 1
    with pytest.raises(InvalidJobError, match="unique_key"):
        queue.batch().enqueue("T", unique_key="k")


def test_a_batch_sealed_while_jobs_are_added_takes_them_out_again(make_queue, raw_db) -> None:
    queue = make_queue()
    batch = queue.batch(on_complete={"job_type": "DONE", "queue": "callbacks"})

    class SealMeanwhile(Middleware):
        def before_enqueue(self, queue_, doc) -> None:
            if doc.get("batch_id") == batch.id:
                queue.store.batches.seal(batch.id)  # another process seals it between the check and the insert

    queue.add_middleware(SealMeanwhile())
    with pytest.raises(BatchSealedError):
        batch.enqueue_many([{"job_type": "T"}] * 2)
    assert raw_db.jobs.count_documents({"batch_id": batch.id}) == 0


def test_a_batch_sealed_and_worked_between_insert_and_recheck_runs_none_of_the_refused_jobs(make_queue, raw_db) -> None:
    """Before staging, a worker claimed a just-inserted job before the re-read found the batch sealed."""
    adder, other = make_queue(), make_queue()
    ran: list[int] = []
    for queue in (adder, other):
        queue.register_handler("T", lambda job: ran.append(job.data["i"]))
    batch = adder.batch(on_complete=("DONE", None))

    class SealAndWorkMeanwhile(Middleware):
        def after_enqueue(self, queue_, doc) -> None:
            if doc.get("batch_id") == batch.id and raw_db.jobs_batches.find_one({"state": "open"}):
                other.store.batches.seal(batch.id)  # another process seals the batch...
                other.run_once()  # ...and its worker claims at once

    adder.add_middleware(SealAndWorkMeanwhile())
    with pytest.raises(BatchSealedError):
        batch.enqueue_many([{"job_type": "T", "data": {"i": i}} for i in range(2)])
    assert ran == [] and raw_db.jobs.count_documents({"batch_id": batch.id}) == 0
    info = adder.get_batch(batch.id)  # checked after the removal: an empty sealed batch finishes
    assert info.finished and info.total == 0 and info.fired == ("complete",)
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE")]


def test_a_graceful_stop_waits_for_the_batch_checks_of_its_last_jobs(make_queue, raw_db) -> None:
    """Before the stop drained the checker, stop() returned while its daemon thread still held the notice."""
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    tracker = queue._batches.tracker
    real_check = tracker.check
    entered = threading.Event()

    def slow_check(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        threading.Event().wait(1.5)  # a slow round trip to the batches collection
        return real_check(*args, **kwargs)

    with queue.batch(**CALLBACKS) as batch:
        batch.enqueue("T")
    tracker.check = slow_check  # type: ignore[method-assign]
    queue.start_polling()
    wait_until(entered.is_set, timeout=20, what="the batch check after the job's final write began")
    queue.stop(timeout=10)
    assert callbacks_of(raw_db, batch.id) == [("complete", "DONE"), ("success", "OK")]


def test_a_failed_job_removed_before_the_batch_finishes_never_lets_on_success_fire(make_queue, raw_db) -> None:
    """Before, purging the failed job left only completed ones counted: on_failure then on_success fired."""
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    queue.register_handler("BOOM", lambda job: 1 / 0)
    with queue.batch(**CALLBACKS) as batch:
        batch.enqueue("BOOM", max_retries=0)
        later = batch.enqueue("T", delay_ms=60_000)
    queue.run_once()
    assert queue.get_batch(batch.id).fired == ("failure",)
    raw_db.jobs.delete_many({"batch_id": batch.id, "status": "failed"})  # what purge or retention does
    queue.store.collection.update_one({"_id": later.id}, {"$set": {"run_at": queue.store.now()}})
    queue.run_once()
    info = queue.get_batch(batch.id)
    assert info.finished and info.counts == {"completed": 1} and info.fired == ("failure", "complete")


@pytest.mark.parametrize("field", ["batch_id", "status", "attempts"])
def test_a_batch_field_the_queue_manages_is_refused_as_a_batch_field(make_queue, raw_db, field) -> None:
    """Before, the error blamed the first callback (``on_complete: ...``)."""
    queue = make_queue()
    value = {"batch_id": ObjectId(), "status": "completed", "attempts": 5}[field]
    with pytest.raises(InvalidBatchError, match=f"^batch fields: .*{field}"):
        queue.batch(on_complete=("DONE", None), **{field: value})
    assert raw_db.jobs_batches.count_documents({}) == 0


def test_info_of_a_batch_whose_document_is_gone_says_so(make_queue, raw_db) -> None:
    """Before, ``batch.info()`` failed an assert."""
    queue = make_queue()
    batch = queue.batch()
    raw_db.jobs_batches.delete_many({})
    with pytest.raises(InvalidBatchError, match="no batch"):
        batch.info()


def test_bad_batch_ids_are_refused_and_unknown_ones_are_none(make_queue, raw_db) -> None:
    queue = make_queue()
    for bad in ("nope", 12, None, "0" * 23):
        with pytest.raises(InvalidBatchError, match="batch id"):
            queue.get_batch(bad)
    assert queue.get_batch(ObjectId()) is None
    with pytest.raises(InvalidBatchError, match="no batch"):
        queue.cancel_batch(ObjectId())
    with pytest.raises(InvalidBatchError, match="no batch"):
        queue.retry_batch(str(ObjectId()))
    assert raw_db.jobs.count_documents({}) == 0 and raw_db.jobs_batches.count_documents({}) == 0


# -- the command line ---------------------------------------------------------------------


def test_batches_show_cancel_and_retry_from_the_command_line(make_queue, raw_db) -> None:
    import io
    import json

    from mongo_job_queue import cli

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main([*argv, "--app", "integration.cli_app:make_queue"], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    queue = make_queue()
    with queue.batch(on_complete=("DONE", {}), organization="acme") as batch:
        batch.enqueue_many([{"job_type": "T", "delay_ms": 60_000}] * 2)
    code, out, err = run("batches", "show", str(batch.id))
    assert code == 0, err
    assert f"batch {batch.id}" in out and "state        sealed" in out and "jobs         2: pending 2" in out
    assert "on_complete" in out and "not fired" in out and "organization acme" in out
    code, out, err = run("batches", "cancel", str(batch.id))
    assert (code, out.strip()) == (0, "cancelled 2 pending job(s), cancellation requested for 0 running"), err
    finished(queue, batch.id)
    code, out, _ = run("batches", "show", str(batch.id), "--json")
    shown = json.loads(out)
    assert shown["state"] == "finished" and shown["counts"] == {"cancelled": 2} and shown["fired"] == ["complete"]
    assert run("batches", "retry", str(batch.id))[1].strip() == "retried 0 failed job(s)"
    left_open = queue.batch(on_complete=("DONE", {}))
    assert run("batches", "seal", str(left_open.id))[:2] == (0, f"batch {left_open.id} finished\n")
    assert run("batches", "seal", str(ObjectId()))[0] == 5
    code, _, err = run("batches", "show", "not-an-id")
    assert code == 2 and "batch id" in err
    code, _, err = run("batches", "show", str(ObjectId()))
    assert code == 5 and "no such batch" in err


def test_jobs_of_an_add_that_died_before_its_release_do_not_keep_the_batch_open(make_queue, raw_db) -> None:
    """An add inserts its jobs staged (unclaimable), then releases them: a crash between leaves them staged."""
    queue = make_queue()
    queue.register_handler("T", lambda job: None)
    batch = queue.batch(**CALLBACKS)
    batch.enqueue("T", {})
    batch.enqueue("T", {"n": "dead add"})
    # The second add's process died after its staged insert: its job is as a staged insert leaves it.
    dead = raw_db.jobs.find_one({"data.n": "dead add"})
    raw_db.jobs.update_one(
        {"_id": dead["_id"]},
        {"$set": {"batch_staged_run_at": dead["run_at"], "run_at": utcnow().replace(year=9000, tzinfo=None)}},
    )
    batch.seal()
    assert queue.drain() == 1
    tracker = queue._batches.tracker
    soon = queue.store.now() + timedelta(minutes=1)
    tracker.run_once(soon)
    assert raw_db.jobs.find_one({"_id": dead["_id"]}) is not None  # a live add may still release it: kept
    assert not queue.get_batch(batch.id).finished
    tracker.run_once(queue.store.now() + timedelta(minutes=11))
    assert raw_db.jobs.find_one({"_id": dead["_id"]}) is None
    info = queue.get_batch(batch.id)
    assert info.finished and info.fired == ("success", "complete")
