"""Documents edited in mongosh: whole numbers stored as doubles are numbers; the hygiene scan is bounded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from helpers import stored_job
from pymongo.collection import Collection
from pymongo.cursor import Cursor

from mongo_job_queue.validation import stored_job_problems

pytestmark = pytest.mark.integration


def _record_finds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record each find's keyword arguments, and the index its cursor is hinted to (as ``hint``)."""
    calls: list[dict[str, Any]] = []
    find, hint = Collection.find, Cursor.hint

    def recorded_find(self: Collection[Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(dict(kwargs))
        return find(self, *args, **kwargs)

    def recorded_hint(self: Cursor[Any], index: Any) -> Any:
        calls[-1]["hint"] = index
        return hint(self, index)

    monkeypatch.setattr(Collection, "find", recorded_find)
    monkeypatch.setattr(Cursor, "hint", recorded_hint)
    return calls


def test_a_job_whose_numbers_mongosh_wrote_as_doubles_runs(make_queue, raw_db) -> None:
    queue = make_queue()
    ran: list[Any] = []
    queue.register_handler("WORK", lambda job: ran.append((job.priority, job.max_retries)) or "ok")
    doc = stored_job(queue.store.now(), priority=10.0, attempts=0.0, max_retries=2.0)
    raw_db.jobs.insert_one(doc)
    assert queue.store.admin.malformed_jobs() == []
    done = queue.run_once()
    assert done is not None and (done.id, done.status, done.result) == (doc["_id"], "completed", "ok")
    assert ran == [(10, 2)]


def test_a_fractional_priority_is_refused_at_claim(make_queue, raw_db) -> None:
    queue = make_queue()
    queue.register_handler("WORK", lambda job: "ok")
    doc = stored_job(queue.store.now(), priority=1.5)
    raw_db.jobs.insert_one(doc)
    queue.run_once()
    stored = raw_db.jobs.find_one({"_id": doc["_id"]})
    assert stored["status"] == "failed" and "'priority' must be an integer" in stored["last_error"]["message"]


@pytest.mark.parametrize("value", [3, 3.0, -2.0])
def test_integral_numbers_are_accepted_wherever_an_integer_is_expected(value: Any) -> None:
    doc = stored_job(datetime(2024, 1, 1))
    doc.update(priority=value, attempts=abs(value), max_retries=abs(value))
    assert stored_job_problems(doc) == []


def test_the_hygiene_scan_finds_what_no_claim_can_see_from_the_claim_index_bounded(
    make_queue, raw_db, monkeypatch
) -> None:
    queue = make_queue()
    now = queue.store.now()
    invisible = [
        stored_job(now, queue=7),
        stored_job(now, type=None),
        stored_job(now, run_at="tomorrow"),
        stored_job(now, status="odd"),
    ]
    healthy = [stored_job(now, priority=float(n)) for n in range(20)]
    raw_db.jobs.insert_many(invisible + healthy)
    calls = _record_finds(monkeypatch)
    found = queue.store.admin.malformed_jobs(limit=10)
    assert sorted(d["_id"] for d in found) == sorted(d["_id"] for d in invisible)
    assert calls and all(c.get("hint") == "mjq_claim" and c.get("limit") and c.get("max_time_ms") for c in calls)


def test_the_lease_sweep_reads_from_the_lease_index_bounded(make_queue, monkeypatch) -> None:
    queue = make_queue()
    queue.register_handler("WORK", lambda job: None)
    queue.enqueue("WORK", {})
    assert queue.worker.claim_one() is not None
    calls = _record_finds(monkeypatch)
    assert queue.store.jobs.expired_leases() == []
    assert calls and all(c.get("hint") == "mjq_lease" and c.get("limit") and c.get("max_time_ms") for c in calls)


def test_the_idle_reads_of_the_next_due_time_and_lease_expiry_use_their_indexes(make_queue, monkeypatch) -> None:
    # The claim index (priority before run_at) would sort every delayed job in memory on each idle read.
    from mongo_job_queue.store.idle import earliest_lease_expiry, next_due

    queue = make_queue()
    now = queue.store.now()
    for delay_ms in (50_000, 20_000, 90_000):
        queue.enqueue("WORK", {}, delay_ms=delay_ms, priority=delay_ms // 10_000)
    calls = _record_finds(monkeypatch)
    due = next_due(queue.store, ["WORK"], ["default"], now)
    assert due is not None and 19 <= (due - now).total_seconds() <= 21  # the earliest, whatever the priority
    assert earliest_lease_expiry(queue.store) is None
    assert [c.get("hint") for c in calls] == ["mjq_due", "mjq_lease"]
    assert all(c.get("limit") == 1 and c.get("max_time_ms") for c in calls)
