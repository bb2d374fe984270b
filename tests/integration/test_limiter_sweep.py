"""The sweep of idle limiter documents (issue 15): without it one per (limit, key value) stays forever.

A document goes once a fresh one would behave the same: no holder, no rate
state in the future, no turn served within the last hour. The deletion is
one conditional ``delete_many``, so an admission racing it is never lost.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from helpers import wait_until

from mongo_job_queue.limits import MUTEX, MUTEX_FIELD, MUTEX_LIMIT, Limit
from mongo_job_queue.store import holders, rates
from mongo_job_queue.store.limiter import Admission, limiter_id
from mongo_job_queue.store.limiter_sweep import FAIR_MEMORY, SWEEP_INTERVAL_S

pytestmark = pytest.mark.integration


def limiter(name: str, value: Any, **fields: Any) -> dict[str, Any]:
    return {"_id": limiter_id(name, value), "limit": name, "value": value, "holders": [], **fields}


def test_a_sweep_deletes_the_idle_limiters_and_keeps_the_held_paced_and_recently_served(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.limit("per-org", key="organization", max_running=2, rate="10/min", fair=True)
    now = queue.store.now()
    second = timedelta(seconds=1)
    running = ObjectId()
    raw_db.jobs.insert_one(  # a live run: its job is processing under its token, with a live lease
        {"_id": running, "status": "processing", "lease_token": "live", "lease_expires_at": now + 60 * second}
    )
    live = {"job": running, "token": "live", "until": now + 30 * second}
    lapsed_live = {"job": running, "token": "live", "until": now - second}  # a late heartbeat: its run still writes
    dead = {"job": ObjectId(), "token": "dead", "until": now - second}  # its job is gone: the run cannot write
    raw_db.jobs_limiters.insert_many(
        [
            limiter(MUTEX, "invoice:1"),  # ran and left: idle
            {"_id": limiter_id(MUTEX, "invoice:2"), "limit": MUTEX, "value": "invoice:2"},  # no holders field
            limiter(MUTEX, "invoice:3", holders=[live]),
            limiter(MUTEX, "invoice:4", holders=[dead]),  # the dead holder is dropped, then the document
            limiter(MUTEX, "invoice:5", holders=[lapsed_live]),
            limiter("per-org", "paced", tat=now + 5 * second, tat_ns=0),  # the rate's next start is later
            limiter("per-org", "spent", tat=now - second, tat_ns=0),  # its rate has nothing left to pace
            limiter("per-org", "served", served_at=now - FAIR_MEMORY + 60 * second),  # its turn still counts
            limiter("per-org", "forgotten", served_at=now - FAIR_MEMORY - second),
        ]
    )
    assert queue.store.limits.sweep(now) == 5
    left = {doc["value"]: doc for doc in raw_db.jobs_limiters.find()}
    assert sorted(left) == ["invoice:3", "invoice:5", "paced", "served"]
    assert [h["token"] for h in left["invoice:3"]["holders"] + left["invoice:5"]["holders"]] == ["live", "live"]
    assert queue.store.limits.sweep(now) == 0  # nothing more to do

    # What was swept behaves as a fresh document: a mutex key is admitted again, a rate starts at once.
    refused: set[str] = set()
    job = {"_id": ObjectId(), MUTEX_FIELD: "invoice:1", "organization": "spent", "type": "T"}
    limits = (MUTEX_LIMIT, Limit.from_doc(raw_db.jobs_limits.find_one({"_id": "per-org"})))
    admitted = queue.store.limits.admit(job, "t", limits, now, now + 30 * second, refused)
    assert isinstance(admitted, Admission) and len(admitted.ids) == 2


def test_a_sweep_sends_nothing_while_no_limit_was_ever_stored(make_queue) -> None:
    queue = make_queue()
    queue.store.control.pause_state()  # what a poller reads anyway: it tells that no limit was ever stored
    assert queue.store.limits.definitions.none_stored()
    assert queue.store.limits.sweep(queue.store.now()) == 0


def test_every_worker_sweeps_from_its_maintenance_thread(make_queue, raw_db) -> None:
    queue = make_queue()
    loop = queue.worker.services.maintenance(queue.worker.config, queue.store.now, None)
    (service,) = [s for s in loop.services if s.name == "limiter sweep"]
    assert service.interval_s == SWEEP_INTERVAL_S == 600
    queue.limit("per-org", key="organization", max_running=1)
    raw_db.jobs_limiters.insert_one(limiter("per-org", "acme"))
    queue.register_handler("T", lambda job: None)
    queue.start_polling()  # a start runs every maintenance step once
    wait_until(lambda: raw_db.jobs_limiters.count_documents({}) == 0, timeout=10, what="the start's sweep")


def race(queue: Any, limit: Limit, racer: str, value: str, jitter_s: float) -> tuple[Any, Any, Any]:
    """A sweep and one admission of ``racer``'s kind on ``value``'s limiter, released together."""
    limiters, jobs, lid = queue.store.limits.limiters, queue.store.collection, limiter_id("per-org", value)
    now = queue.store.now()
    holder = {"job": ObjectId(), "token": value, "until": now + timedelta(seconds=30)}
    go = threading.Barrier(2, timeout=10)
    results: list[Any] = []

    def sweep() -> None:
        go.wait()
        queue.store.limits.sweep(now)

    def admit() -> None:
        go.wait()
        time.sleep(jitter_s)  # not a wait for anything: jitter, so the sweep wins some rounds
        if racer == "push":
            results.append(holders.push(limiters, jobs, lid, limit, value, holder, now))
        elif racer == "rate":
            results.append(rates.spend(limiters, lid, limit, value, now))
        else:
            served = {"$max": {"served_at": now}, "$setOnInsert": {"limit": "per-org", "value": value}}
            results.append(limiters.update_one({"_id": lid}, served, upsert=True))

    threads = [threading.Thread(target=sweep), threading.Thread(target=admit)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return (results or [None])[0], holder, now


@pytest.mark.parametrize("racer", ["push", "rate", "turn"])
def test_an_admission_racing_the_sweep_is_never_lost(make_queue, raw_db, racer) -> None:
    """Each round: an idle document, then a sweep and an admission released together; the admission must stay."""
    queue = make_queue()
    queue.limit("per-org", key="organization", max_running=1, rate="1/min", fair=True)
    limit = Limit.from_doc(raw_db.jobs_limits.find_one({"_id": "per-org"}))
    outcomes = {"kept": 0, "recreated": 0}
    for round_ in range(40):
        value = f"org{round_}"
        raw_db.jobs_limiters.insert_one(limiter("per-org", value, round=round_))
        result, holder, now = race(queue, limit, racer, value, (round_ % 5) / 1000)
        assert result, f"round {round_}: the admission was refused"
        doc = raw_db.jobs_limiters.find_one({"_id": limiter_id("per-org", value)})
        assert doc is not None, f"round {round_}: the sweep deleted an admission ({racer})"
        if racer == "push":
            assert [(h["job"], h["token"]) for h in doc["holders"]] == [(holder["job"], holder["token"])]
        elif racer == "rate":
            assert doc["tat"] > now
        else:
            assert doc["served_at"] is not None
        outcomes["kept" if doc.get("round") == round_ else "recreated"] += 1
    print(f"{racer}: {outcomes}")


class SweptAfterRead:
    """The limiters collection, but the sweep runs right after the first read: between a rate's read and its write."""

    def __init__(self, limiters: Any, sweep: Any) -> None:
        self.limiters, self.sweep, self.swept = limiters, sweep, 0

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        found = self.limiters.find_one(*args, **kwargs)
        if not self.swept:
            self.swept = self.sweep()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.limiters, name)


def test_each_order_of_an_admission_and_the_sweep_keeps_the_admission(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.limit("per-org", key="organization", max_running=1, rate="1/min")
    limit = Limit.from_doc(raw_db.jobs_limits.find_one({"_id": "per-org"}))
    limiters, jobs, now = queue.store.limits.limiters, queue.store.collection, queue.store.now()
    holder = {"job": ObjectId(), "token": "t", "until": now + timedelta(seconds=30)}
    for value, push_first in (("a", True), ("b", False)):
        raw_db.jobs_limiters.insert_one(limiter("per-org", value, old=True))
        lid = limiter_id("per-org", value)
        if push_first:
            assert holders.push(limiters, jobs, lid, limit, value, holder, now)
        assert queue.store.limits.sweep(now) == (0 if push_first else 1)
        if not push_first:
            assert holders.push(limiters, jobs, lid, limit, value, holder, now)
        doc = raw_db.jobs_limiters.find_one({"_id": lid})
        assert [h["token"] for h in doc["holders"]] == ["t"] and doc.get("old") is (True if push_first else None)
    # A rate that read the document, then lost it to the sweep before its compare-and-set, spends on a fresh one.
    raw_db.jobs_limiters.insert_one(limiter("per-org", "c", tat=now - timedelta(seconds=1), tat_ns=0, old=True))
    racing = SweptAfterRead(limiters, lambda: queue.store.limits.sweep(now))
    assert rates.spend(racing, limiter_id("per-org", "c"), limit, "c", now) is not None  # type: ignore[arg-type]
    assert racing.swept == 1  # deleted right after the rate's first read
    doc = raw_db.jobs_limiters.find_one({"_id": limiter_id("per-org", "c")})
    assert doc is not None and "old" not in doc and doc["tat"] > now


def _limiter_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Record each find and delete_many sent to a limiters collection, with its filter."""
    from pymongo.collection import Collection

    calls: list[tuple[str, Any]] = []
    for name in ("find", "find_one", "delete_many", "update_one", "bulk_write"):
        real = getattr(Collection, name)

        def recorded(self: Any, *args: Any, __real: Any = real, __name: str = name, **kwargs: Any) -> Any:
            if self.name.endswith("_limiters"):
                calls.append((__name, args[0] if args else kwargs.get("filter")))
            return __real(self, *args, **kwargs)

        monkeypatch.setattr(Collection, name, recorded)
    return calls


def test_an_app_without_limits_sends_no_sweep_even_long_after_its_last_pause_read(make_queue, monkeypatch) -> None:
    # The review of the sweep found it: "no limit stored" was read from the pause version, which is trusted
    # for seconds only, and an idle worker on its stream reads the pause state only when it changes.
    queue = make_queue()
    queue.store.control.pause_state()  # version 0: no limit ever stored
    queue.store.limits.definitions._version_at -= 3_600  # an hour since, idle on its stream
    calls = _limiter_calls(monkeypatch)
    assert queue.store.limits.sweep(queue.store.now()) == 0
    assert queue.store.limits.sweep_step(queue.store.now()) == SWEEP_INTERVAL_S
    assert calls == []


def test_a_backlog_is_swept_in_bounded_batches_within_a_budget_per_step(make_queue, raw_db, monkeypatch) -> None:
    # A backlog swept by one unbounded call timed out every try (100,000 documents on the embedded server),
    # and held up stop() and the lease rescue on the maintenance thread meanwhile.
    from mongo_job_queue.store import limiter_sweep

    # The batches' shape is the point here, not the bound: a 500-id delete takes about a second on the
    # embedded server on a slow machine (a timeout halves the batch: the test above).
    queue = make_queue(lease_ms=10_000, db_timeout_ms=5_000)
    queue.limit("per-org", key="organization", max_running=1)
    raw_db.jobs_limiters.insert_many(limiter(MUTEX, f"invoice:{n}") for n in range(1_200))
    monkeypatch.setattr(limiter_sweep, "_DELETE_BATCH", 500)
    monkeypatch.setattr(limiter_sweep, "SWEEP_BUDGET_S", 0.0)  # one batch per step
    calls = _limiter_calls(monkeypatch)
    now = queue.store.now()
    steps = []
    while True:
        steps.append(queue.store.limits.sweep_step(now))
        if steps[-1] == SWEEP_INTERVAL_S or len(steps) > 10:
            break
    assert raw_db.jobs_limiters.count_documents({}) == 0
    assert steps == [limiter_sweep.SWEEP_AGAIN_S] * 3 + [SWEEP_INTERVAL_S]  # holders, 500, 500, 200 (done)
    deletes = [filt for name, filt in calls if name == "delete_many"]
    assert len(deletes) == 3 and all(len(f["$and"][0]["_id"]["$in"]) <= 500 for f in deletes)


def test_a_delete_that_runs_out_of_time_is_sent_again_in_smaller_batches(make_queue, raw_db, monkeypatch) -> None:
    # On a slow server a 500-id delete outlasted the call's bound (1.0 s on the embedded server on a slow
    # day): every try timed out with the same batch, and the backlog was never swept.
    from pymongo.collection import Collection
    from pymongo.errors import NetworkTimeout

    queue = make_queue()
    queue.limit("per-org", key="organization", max_running=1)
    raw_db.jobs_limiters.insert_many(limiter(MUTEX, f"invoice:{n}") for n in range(600))
    sent: list[int] = []
    real = Collection.delete_many

    def slow_for_large(self: Any, filt: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name.endswith("_limiters"):
            size = len(filt["$and"][0]["_id"]["$in"])
            sent.append(size)
            if size > 150:
                raise NetworkTimeout("the delete of a large batch ran out of time")
        return real(self, filt, *args, **kwargs)

    monkeypatch.setattr(Collection, "delete_many", slow_for_large)
    now = queue.store.now()
    for _ in range(20):
        if queue.store.limits.sweep_step(now) == SWEEP_INTERVAL_S:
            break
    assert raw_db.jobs_limiters.count_documents({}) == 0
    assert sent[:3] == [500, 250, 125]  # halved after each timeout, then it fits
    assert all(size <= 250 for size in sent[3:])  # doubled after each write that fitted: probing, never past 500


def test_the_table_of_a_forked_child_is_cleared_even_if_a_parent_thread_held_it() -> None:
    # A thread of the parent (the heartbeat, which outlives stop() for an abandoned handler's slots) may hold
    # the table's condition at the fork; the child, which has no such thread, must not wait for it.
    from mongo_job_queue.worker.inflight import InflightTable

    table = InflightTable()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with table.cond:
            held.set()
            release.wait(10)

    threading.Thread(target=holder, daemon=True).start()
    assert held.wait(5)
    clearing = threading.Thread(target=table.clear, daemon=True)
    clearing.start()
    clearing.join(2)
    release.set()
    assert not clearing.is_alive(), "clear() waited for a condition held by another thread"
