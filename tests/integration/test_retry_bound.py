"""The handler's max_retries decides where the job runs, whichever process inserted it.

A web process without the handler enqueues jobs and fires schedules for
dedicated workers (the docs allow it). Its config default (3 retries) must
not outvote a handler declared ``max_retries=0``, such as a card charge: the
charge runs once, including when a lease rescuer that lacks the handler
requeued it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def charging_worker(make_queue: Any, runs: list[Any]) -> Any:
    worker = make_queue()

    def charge(job: Any) -> None:
        runs.append(job.id)
        raise RuntimeError("card declined")

    worker.register_handler("charge", charge, max_retries=0)
    return worker


def test_jobs_enqueued_or_fired_without_the_handler_get_its_max_retries(make_queue, raw_db) -> None:
    web = make_queue()  # no handler here
    enqueued = web.enqueue("charge", {"order": 1})
    web.schedule("nightly-charge", "0 3 * * *", "charge", {"order": 2})
    web.fire_schedules(datetime(2026, 1, 1, 2))
    assert [f.enqueued for f in web.fire_schedules(datetime(2026, 1, 1, 3))] == [True]
    web.enqueue("charge", {"order": 3}, max_retries=1)  # its own bound, kept
    runs: list[Any] = []
    worker = charging_worker(make_queue, runs)
    for _ in range(3):
        worker.run_once()
    statuses = {d["data"]["order"]: (d["status"], d["attempts"]) for d in raw_db.jobs.find()}
    assert statuses == {1: ("failed", 1), 2: ("failed", 1), 3: ("pending", 1)}  # 3 asked for a retry itself
    assert runs.count(enqueued.id) == 1 and len(runs) == 3


def test_a_rescue_by_a_process_without_the_handler_does_not_buy_an_extra_run(make_queue, raw_db) -> None:
    web = make_queue()
    job = web.enqueue("charge", {"order": 1})
    runs: list[Any] = []
    worker = charging_worker(make_queue, runs)
    worker.ensure_indexes()
    assert worker.worker.claim_one() is not None  # attempt 1 starts, then its worker dies
    past = web.store.now() - timedelta(minutes=5)
    raw_db.jobs.update_one({"_id": job.id}, {"$set": {"lease_expires_at": past}})
    assert web.recover_orphans() == (1, 0)  # no handler there: the stored default allows a retry
    assert worker.run_once().status == "failed"  # the handler's bound is spent: not run again
    assert runs == []
    doc = raw_db.jobs.find_one({"_id": job.id})
    assert (doc["attempts"], "max_retries=0" in doc["last_error"]["message"]) == (2, True)


def test_a_rescuer_with_the_handler_applies_its_bound(make_queue, raw_db) -> None:
    job = make_queue().enqueue("charge", {"order": 1})
    runs: list[Any] = []
    worker = charging_worker(make_queue, runs)
    worker.ensure_indexes()
    assert worker.worker.claim_one() is not None
    past = worker.store.now() - timedelta(minutes=5)
    raw_db.jobs.update_one({"_id": job.id}, {"$set": {"lease_expires_at": past}})
    assert worker.recover_orphans() == (0, 1)
    assert raw_db.jobs.find_one({"_id": job.id})["status"] == "failed"


def test_a_rescuer_without_the_handler_does_not_give_up_early(make_queue, raw_db) -> None:
    web = make_queue()  # no handler: stores the config default (3 retries), marked
    job = web.enqueue("report", {"n": 1})
    worker = make_queue()
    worker.register_handler("report", lambda j: None, max_retries=10)
    worker.ensure_indexes()
    rescuer = make_queue()  # serves other types only
    rescuer.register_handler("email", lambda j: None)
    for _ in range(6):  # past the stored default, within the handler's bound
        assert worker.worker.claim_one() is not None  # the attempt starts, then its worker dies
        past = web.store.now() - timedelta(minutes=5)
        raw_db.jobs.update_one({"_id": job.id}, {"$set": {"lease_expires_at": past}})
        assert rescuer.recover_orphans() == (1, 0)
    doc = raw_db.jobs.find_one({"_id": job.id})
    assert (doc["status"], doc["attempts"]) == ("pending", 6)
    assert worker.run_once().status == "completed"  # attempt 7 of the handler's 11 runs
