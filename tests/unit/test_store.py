"""JobStore: claims and leases, fenced outcome writes, lease recovery and transient-error retries."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from conftest import OrgJob, raw_doc, raw_docs
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    NotPrimaryError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from mongo_job_queue import InvalidJobError, JobError
from mongo_job_queue.store import ClaimedJob, is_transient

LEASE_MS = 10_000


@pytest.fixture
def queue(make_queue: Any) -> Any:
    q = make_queue(lease_ms=LEASE_MS, heartbeat_interval_ms=LEASE_MS // 2, worker_id="w-test", db_retry_attempts=3)
    q.register_handler("t", lambda job: "done")
    return q


def _claim(queue: Any) -> ClaimedJob:
    claimed = queue.store.jobs.claim(["t"], ["default"], queue.worker.owner)
    assert claimed is not None
    return claimed


def _record(queue: Any, claimed: ClaimedJob, message: str = "x") -> Any:
    return JobError.from_exception(
        ValueError(message), attempt=claimed.doc["attempts"], at=queue.clock(), token=claimed.token, config=queue.config
    )


def _flaky(
    monkeypatch: pytest.MonkeyPatch, method: str, errors: list[BaseException], *, apply_first: bool = False
) -> list[Any]:
    """Make the collection's ``method`` raise ``errors`` on its first calls (optionally after applying)."""
    collection = OrgJob._get_collection()
    real = getattr(collection, method)
    calls: list[Any] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) <= len(errors):
            if apply_first:
                real(*args, **kwargs)
            raise errors[len(calls) - 1]
        return real(*args, **kwargs)

    monkeypatch.setattr(collection, method, wrapper)
    return calls


# -- claim ----------------------------------------------------------------------


def test_claim_leases_the_job(queue: Any, clock: Any) -> None:
    job = queue.enqueue("t")
    clock.advance(seconds=2)
    claimed = _claim(queue)
    assert claimed.id == job.id
    doc = raw_doc()
    assert claimed.doc == doc
    assert doc["status"] == "processing"
    assert doc["attempts"] == 1
    assert doc["lease_token"] == claimed.token
    assert len(claimed.token) == 32
    assert doc["lease_owner"] == {"host": socket.gethostname(), "pid": os.getpid(), "worker_id": "w-test"}
    assert doc["lease_expires_at"] == clock.now + timedelta(milliseconds=LEASE_MS)
    assert doc["started_at"] == clock.now
    assert doc["updated_at"] == clock.now


def test_claim_returns_none_without_types_queues_or_due_jobs(queue: Any) -> None:
    queue.enqueue("t")
    owner = queue.worker.owner
    assert queue.store.jobs.claim([], ["default"], owner) is None
    assert queue.store.jobs.claim(["t"], [], owner) is None
    assert queue.store.jobs.claim(["other"], ["default"], owner) is None
    assert queue.store.jobs.claim(["t"], ["other"], owner) is None
    assert raw_doc()["status"] == "pending"
    _claim(queue)
    assert queue.store.jobs.claim(["t"], ["default"], owner) is None  # the only job is taken


def test_each_claim_gets_a_new_token(queue: Any) -> None:
    queue.enqueue("t")
    queue.enqueue("t")
    assert _claim(queue).token != _claim(queue).token


# -- fenced outcomes ------------------------------------------------------------------


@pytest.mark.parametrize("op", ["complete", "fail", "reschedule", "release"])
def test_wrong_token_changes_nothing(queue: Any, clock: Any, op: str) -> None:
    queue.enqueue("t")
    claimed = _claim(queue)
    before = raw_docs()
    impostor = ClaimedJob(claimed.doc, "not-the-token")
    clock.advance(seconds=1)
    calls: dict[str, Callable[[], bool]] = {
        "complete": lambda: queue.store.jobs.complete(impostor, {"r": 1}),
        "fail": lambda: queue.store.jobs.fail(impostor, _record(queue, impostor)),
        "reschedule": lambda: queue.store.jobs.reschedule(impostor, clock.now, _record(queue, impostor)),
        "release": lambda: queue.store.jobs.release(impostor),
    }
    assert calls[op]() is False
    assert raw_docs() == before


def test_complete_fail_reschedule_with_the_right_token(queue: Any, clock: Any) -> None:
    for _ in range(3):
        queue.enqueue("t")
    first, second, third = _claim(queue), _claim(queue), _claim(queue)
    assert queue.store.jobs.complete(first, {"ok": True}) is True
    assert queue.store.jobs.fail(second, _record(queue, second, "fatal")) is True
    later = clock.now + timedelta(minutes=5)
    assert queue.store.jobs.reschedule(third, later, _record(queue, third, "again")) is True
    docs = {d["_id"]: d for d in raw_docs()}
    assert docs[first.id]["status"] == "completed"
    assert docs[first.id]["result"] == {"ok": True}
    assert docs[second.id]["status"] == "failed"
    assert docs[second.id]["last_error"]["message"] == "fatal"
    assert docs[third.id]["status"] == "pending"
    assert docs[third.id]["run_at"] == later
    assert docs[third.id]["errors"][0]["message"] == "again"
    for doc in docs.values():
        assert "lease_expires_at" not in doc
    # A second outcome for the same claim is refused: the job is no longer processing.
    assert queue.store.jobs.complete(second, None) is False
    assert queue.store.jobs.fail(first, _record(queue, first)) is False


def test_release_returns_the_job_uncounted(queue: Any) -> None:
    queue.enqueue("t")
    claimed = _claim(queue)
    assert raw_doc()["attempts"] == 1
    assert queue.store.jobs.release(claimed) is True
    doc = raw_doc()
    assert doc["status"] == "pending"
    assert doc["attempts"] == 0
    assert "lease_expires_at" not in doc
    queue.store.jobs.release(claimed)  # a repeated release must not hand back (or uncount) anything twice
    doc = raw_doc()
    assert doc["attempts"] == 0
    assert doc["status"] == "pending"


# -- leases -----------------------------------------------------------------------------


@pytest.mark.usefixtures("mongomock_bulk_write")
def test_renew_leases_extends_and_reports_lost(queue: Any, clock: Any) -> None:
    queue.enqueue("t")
    queue.enqueue("t")
    a, b = _claim(queue), _claim(queue)
    assert queue.store.jobs.renew_leases({}) == set()
    clock.advance(seconds=4)
    assert queue.store.jobs.renew_leases({a.id: a.token, b.id: b.token}) == set()
    expected = clock.now + timedelta(milliseconds=LEASE_MS)
    assert [d["lease_expires_at"] for d in raw_docs()] == [expected, expected]

    # Another worker took b over (new token): b is reported lost and left alone.
    OrgJob._get_collection().update_one({"_id": b.id}, {"$set": {"lease_token": "someone-else"}})
    clock.advance(seconds=4)
    assert queue.store.jobs.renew_leases({a.id: a.token, b.id: b.token}) == {b.id}
    docs = {d["_id"]: d for d in raw_docs()}
    assert docs[a.id]["lease_expires_at"] == clock.now + timedelta(milliseconds=LEASE_MS)
    assert docs[b.id]["lease_expires_at"] == expected
    assert docs[b.id]["lease_token"] == "someone-else"


@pytest.mark.usefixtures("mongomock_bulk_write")
def test_worker_flags_a_lost_lease_of_a_running_job(queue: Any) -> None:
    queue.enqueue("t")
    queue.enqueue("t")
    kept, lost = _claim(queue), _claim(queue)
    kept_run = queue.worker.table.add(kept)
    lost_run = queue.worker.table.add(lost)
    OrgJob._get_collection().update_one({"_id": lost.id}, {"$set": {"status": "pending", "lease_token": "other"}})
    queue.worker.renew_leases()
    assert lost_run.lease_lost.is_set()
    assert not kept_run.lease_lost.is_set()


def test_a_batch_lease_starts_when_it_is_written_not_when_the_read_began(queue: Any, clock: Any) -> None:
    queue.enqueue("t")
    queue.enqueue("t")
    ticks = iter([clock.now + timedelta(seconds=s) for s in (0, 3, 6)])
    queue.store.clock = lambda: next(ticks)  # the read takes 3 s on a busy server
    claimed = queue.store.jobs.claim_batch(["t"], ["default"], queue.worker.owner, 2)
    assert len(claimed) == 2
    leased_at = clock.now + timedelta(seconds=3)
    for c in claimed:
        assert (c.doc["started_at"], c.doc["lease_expires_at"]) == (
            leased_at,
            leased_at + timedelta(milliseconds=LEASE_MS),
        )


@pytest.mark.usefixtures("mongomock_bulk_write")
def test_a_slow_claim_is_renewed_before_its_jobs_start_and_a_lapsed_one_is_not_started(
    queue: Any, clock: Any, caplog: Any
) -> None:
    queue.enqueue("t")
    queue.enqueue("t")
    fast = _claim(queue)
    assert queue.worker.confirm_slow_claims([fast]) == [fast]  # a fresh lease: no extra round trip
    assert raw_docs()[0]["lease_expires_at"] == fast.doc["lease_expires_at"]
    slow = _claim(queue)
    clock.advance(ms=LEASE_MS // 2 + 1)  # the claim's reply took more than a heartbeat interval
    assert queue.worker.confirm_slow_claims([slow]) == [slow]
    assert {d["_id"]: d for d in raw_docs()}[slow.id]["lease_expires_at"] == clock.now + timedelta(
        milliseconds=LEASE_MS
    )
    clock.advance(ms=LEASE_MS + 1)  # now both lapse, and a sweeper returns them to the queue
    assert queue.recover_orphans() == (2, 0)
    with caplog.at_level("WARNING"):
        assert queue.worker.confirm_slow_claims([fast, slow]) == []
    assert caplog.text.count("lease lapsed while the claim was in flight; not started here") == 2


def test_recover_orphans_requeues_and_fails_expired_leases(queue: Any, clock: Any) -> None:
    requeue = queue.enqueue("t", priority=2, max_retries=3)
    give_up = queue.enqueue("t", priority=1, max_retries=0)
    old = _claim(queue)
    assert old.id == requeue.id
    assert _claim(queue).id == give_up.id
    clock.advance(ms=LEASE_MS)
    live = queue.enqueue("t")
    assert _claim(queue).id == live.id
    assert queue.recover_orphans() == (0, 0)  # expiry is exclusive: at lease_expires_at it still holds
    clock.advance(ms=1)

    assert queue.recover_orphans() == (1, 1)
    docs = {d["_id"]: d for d in raw_docs()}

    requeued = docs[requeue.id]
    assert requeued["status"] == "pending"
    assert requeued["attempts"] == 1  # the lost attempt counts
    assert requeued["run_at"] == clock.now
    assert "lease_expires_at" not in requeued
    assert len(requeued["errors"]) == 1
    error = requeued["last_error"]
    assert error == requeued["errors"][0]
    assert error["type"] == "mongo_job_queue.errors.LeaseExpired"
    assert "lease expired on attempt 1" in error["message"]
    assert "w-test" in error["message"]
    assert error["attempt"] == 1
    assert error["lease_token"] == old.token
    assert error["at"] == clock.now

    failed = docs[give_up.id]
    assert failed["status"] == "failed"
    assert failed["attempts"] == 1
    assert failed["finished_at"] == clock.now
    assert "lease expired" in failed["last_error"]["message"]

    untouched = docs[live.id]
    assert untouched["status"] == "processing"
    assert "errors" not in untouched or untouched["errors"] == []

    # The frozen worker wakes up: its late outcome is refused and overwrites nothing.
    before = raw_docs()
    assert queue.store.jobs.complete(old, {"late": True}) is False
    assert raw_docs() == before
    assert queue.recover_orphans() == (0, 0)

    # The requeued job runs again on a fresh lease and counts its second attempt.
    done = queue.run_once()
    assert done.id == requeue.id
    assert done.status == "completed"
    assert done.attempts == 2


@pytest.mark.parametrize(("op", "max_retries"), [("reschedule", 3), ("release", 3), ("fail", 0)])
def test_late_outcome_after_recovery_reports_the_lost_lease(queue: Any, clock: Any, op: str, max_retries: int) -> None:
    # Recovery requeues the job (or fails it when no attempt is left) and keeps
    # the old token on it; the frozen worker's late write must still be refused.
    queue.enqueue("t", max_retries=max_retries)
    old = _claim(queue)
    clock.advance(ms=LEASE_MS + 1)
    assert sum(queue.recover_orphans()) == 1
    before = raw_docs()
    record = _record(queue, old, "late handler error")
    calls: dict[str, Callable[[], bool]] = {
        "reschedule": lambda: queue.store.jobs.reschedule(old, clock.now + timedelta(hours=1), record),
        "release": lambda: queue.store.jobs.release(old),
        "fail": lambda: queue.store.jobs.fail(old, record),
    }
    assert raw_docs() == before
    assert calls[op]() is False
    assert raw_docs() == before


def test_repeated_lease_expiry_uses_up_the_attempts(queue: Any, clock: Any) -> None:
    queue.enqueue("t", max_retries=1)
    _claim(queue)
    clock.advance(ms=LEASE_MS + 1)
    assert queue.recover_orphans() == (1, 0)
    _claim(queue)
    clock.advance(ms=LEASE_MS + 1)
    assert queue.recover_orphans() == (0, 1)
    doc = raw_doc()
    assert doc["status"] == "failed"
    assert doc["attempts"] == 2
    assert [e["attempt"] for e in doc["errors"]] == [1, 2]


@pytest.mark.usefixtures("mongomock_bulk_write")
def test_recover_loses_to_a_heartbeat_that_lands_first(queue: Any, clock: Any) -> None:
    queue.enqueue("t")
    claimed = _claim(queue)
    clock.advance(ms=LEASE_MS + 1)
    [expired] = queue.store.jobs.expired_leases()
    assert expired["_id"] == claimed.id
    assert queue.store.jobs.renew_leases({claimed.id: claimed.token}) == set()
    assert queue.store.jobs.recover(expired, _record(queue, claimed), False) is False
    assert raw_doc()["status"] == "processing"
    assert queue.store.jobs.complete(claimed) is True


# -- transient errors ---------------------------------------------------------------------


def test_complete_is_retried_after_a_transient_error(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    queue.enqueue("t")
    claimed = _claim(queue)
    calls = _flaky(monkeypatch, "update_one", [AutoReconnect("primary stepped down")])
    assert queue.store.jobs.complete(claimed, "r") is True
    assert len(calls) == 2
    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= 2
    assert raw_doc()["status"] == "completed"
    assert raw_doc()["result"] == "r"


def test_retried_complete_whose_first_try_applied_returns_true(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    queue.enqueue("t")
    claimed = _claim(queue)
    calls = _flaky(monkeypatch, "update_one", [AutoReconnect("reply lost")], apply_first=True)
    assert queue.store.jobs.complete(claimed, "r") is True
    assert len(calls) == 2
    assert len(sleeps) == 1
    doc = raw_doc()
    assert doc["status"] == "completed"
    assert doc["result"] == "r"


@pytest.mark.parametrize("target", ["reschedule", "fail"])
def test_retried_write_after_a_lease_recovery_reports_the_lost_lease(
    queue: Any, clock: Any, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    # The first try of the outcome write fails without applying; before the
    # retry, the lease expires and a sweep recovers the job (requeued, or failed
    # when no attempt is left). The recovered document keeps the old token and
    # has the target status, but the write was not ours: the lease was lost.
    queue.enqueue("t", max_retries=3 if target == "reschedule" else 0)
    claimed = _claim(queue)
    record = _record(queue, claimed, "handler error")
    collection = OrgJob._get_collection()
    real = collection.update_one
    armed = [True]

    def update_one(*args: Any, **kwargs: Any) -> Any:
        if armed[0]:
            armed[0] = False
            clock.advance(ms=LEASE_MS + 1)
            assert queue.recover_orphans() == ((1, 0) if target == "reschedule" else (0, 1))
            raise AutoReconnect("partitioned")
        return real(*args, **kwargs)

    monkeypatch.setattr(collection, "update_one", update_one)
    if target == "reschedule":
        written = queue.store.jobs.reschedule(claimed, clock.now + timedelta(hours=1), record)
    else:
        written = queue.store.jobs.fail(claimed, record)
    doc = raw_doc()
    assert [e["message"] for e in doc["errors"]] == [doc["last_error"]["message"]]
    assert "lease expired" in doc["last_error"]["message"]  # the handler's error was not recorded
    assert written is False


def test_non_transient_error_is_not_retried(queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    queue.enqueue("t")
    claimed = _claim(queue)
    before = raw_docs()
    calls = _flaky(monkeypatch, "update_one", [OperationFailure("bad value", code=2)])
    with pytest.raises(OperationFailure):
        queue.store.jobs.complete(claimed)
    assert len(calls) == 1
    assert sleeps == []
    assert raw_docs() == before


def test_retries_stop_after_db_retry_attempts(queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    queue.enqueue("t")
    claimed = _claim(queue)
    before = raw_docs()
    calls = _flaky(monkeypatch, "update_one", [AutoReconnect(f"down {i}") for i in range(10)])
    with pytest.raises(AutoReconnect, match="down 2"):
        queue.store.jobs.complete(claimed)
    assert len(calls) == 3  # db_retry_attempts
    assert len(sleeps) == 2
    assert all(0 <= s <= 2 for s in sleeps)
    assert raw_docs() == before


def test_retry_warnings_count_every_try(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    # The first try runs outside tenacity (a fast path): its failure is still try 1 of the count.
    queue.enqueue("t")
    claimed = _claim(queue)
    _flaky(monkeypatch, "update_one", [AutoReconnect("down 0"), AutoReconnect("down 1")])
    with caplog.at_level(logging.WARNING):
        assert queue.store.jobs.complete(claimed) is True
    tries = [r.getMessage() for r in caplog.records if "transient database error" in r.getMessage()]
    assert [t.split("(")[1].split(")")[0] for t in tries] == ["try 1 of 3", "try 2 of 3"]
    assert "down 0" in tries[0] and "down 1" in tries[1]
    assert len(sleeps) == 2


def test_claim_retry_finds_the_job_its_first_try_claimed(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    first = queue.enqueue("t", priority=1)
    second = queue.enqueue("t")
    calls = _flaky(monkeypatch, "find_one_and_update", [AutoReconnect("reply lost")], apply_first=True)
    claimed = _claim(queue)
    assert claimed.id == first.id
    assert len(calls) == 1  # the retry found it by token instead of claiming again
    assert len(sleeps) == 1
    docs = {d["_id"]: d for d in raw_docs()}
    assert docs[first.id]["attempts"] == 1
    assert docs[first.id]["lease_token"] == claimed.token
    assert docs[second.id]["status"] == "pending"
    assert docs[second.id]["attempts"] == 0


def test_claim_retry_claims_when_the_first_try_did_not_apply(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    job = queue.enqueue("t")
    calls = _flaky(monkeypatch, "find_one_and_update", [AutoReconnect("no reply")])
    claimed = _claim(queue)
    assert claimed.id == job.id
    assert len(calls) == 2
    assert raw_doc()["attempts"] == 1


def test_insert_retry_after_an_applied_first_try_inserts_once(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    collection = OrgJob._get_collection()
    real = collection.insert_one
    calls: list[Any] = []

    def insert_one(doc: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(doc["_id"])
        if len(calls) == 1:
            real(doc, *args, **kwargs)
            raise AutoReconnect("reply lost")
        # What a server says for the second insert of the same _id.
        raise DuplicateKeyError(
            f"E11000 duplicate key error collection: db.unit_org_jobs index: _id_ dup key: {{ _id: {doc['_id']} }}",
            11000,
            {"code": 11000, "keyPattern": {"_id": 1}, "keyValue": {"_id": doc["_id"]}},
        )

    monkeypatch.setattr(collection, "insert_one", insert_one)
    job = queue.enqueue("t", organization="acme")
    assert len(calls) == 2
    assert len(sleeps) == 1
    assert raw_doc()["_id"] == job.id


def test_insert_duplicate_on_first_try_is_invalid_job(queue: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    collection = OrgJob._get_collection()

    def insert_one(doc: Any, *args: Any, **kwargs: Any) -> Any:
        raise DuplicateKeyError("E11000 duplicate key error index: app_unique", 11000, {"keyPattern": {"ref": 1}})

    monkeypatch.setattr(collection, "insert_one", insert_one)
    with pytest.raises(InvalidJobError, match="unique index of OrgJob"):
        queue.enqueue("t")


def test_a_retried_insert_refused_by_an_app_index_named_like_id_is_not_taken_for_its_own(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    # An older server names the index only in its message. "order_id_1" holds
    # "_id_", but it is the app's index refusing the job, not the job's own
    # _id inserted by the first try: the enqueue must fail, not report success.
    collection = OrgJob._get_collection()
    calls: list[Any] = []

    def insert_one(doc: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(doc["_id"])
        if len(calls) == 1:
            raise AutoReconnect("no reply, nothing inserted")
        raise DuplicateKeyError(
            "E11000 duplicate key error collection: db.jobs index: order_id_1 dup key: { x: 1 }", 11000
        )

    monkeypatch.setattr(collection, "insert_one", insert_one)
    with pytest.raises(InvalidJobError, match="unique index of OrgJob"):
        queue.enqueue("t")
    assert len(calls) == 2
    assert raw_docs() == []


def test_insert_many_retry_inserts_only_the_missing_jobs(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    collection = OrgJob._get_collection()
    real = collection.insert_many
    batches: list[int] = []

    def insert_many(docs: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(len(docs))
        if len(batches) == 1:
            real(docs[:2], *args, **kwargs)  # the connection dropped mid-batch
            raise AutoReconnect("connection reset")
        return real(docs, *args, **kwargs)

    monkeypatch.setattr(collection, "insert_many", insert_many)
    jobs = queue.enqueue_many([{"job_type": "t", "data": {"i": i}} for i in range(5)])
    assert batches == [5, 3]
    assert len(sleeps) == 1
    docs = raw_docs()
    assert sorted(d["data"]["i"] for d in docs) == [0, 1, 2, 3, 4]
    assert {d["_id"] for d in docs} == {j.id for j in jobs}


def test_reads_are_retried(queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    job = queue.enqueue("t")
    _flaky(monkeypatch, "find_one", [NotPrimaryError("not primary")])
    assert queue.get_job(job.id).id == job.id
    assert len(sleeps) == 1
    assert queue.get_job(ObjectId()) is None


def test_run_once_survives_a_transient_error_on_complete(
    queue: Any, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    queue.enqueue("t")
    _flaky(monkeypatch, "update_one", [AutoReconnect("blip")])
    done = queue.run_once()
    assert done.status == "completed"
    assert done.result == "done"
    assert len(sleeps) == 1


# -- error classification ------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        AutoReconnect("x"),
        NotPrimaryError("x"),
        WriteConcernError("waiting for replication timed out", 64, {}),
        OperationFailure("x", code=189),
        OperationFailure("x", code=10107),
        OperationFailure("x", code=11602),
        OperationFailure("x", code=91),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'code', '')}",
)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc) is True


@pytest.mark.parametrize(
    "exc",
    [
        OperationFailure("x", code=2),
        OperationFailure("x", code=None),
        DuplicateKeyError("E11000", 11000),
        PyMongoError("x"),
        ValueError("x"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'code', '')}",
)
def test_non_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc) is False


def test_retryable_write_label_is_transient() -> None:
    exc = OperationFailure("x", code=2, details={"errorLabels": ["RetryableWriteError"]})
    assert is_transient(exc) is True


def test_bulk_write_error_is_transient_only_for_write_concern_errors() -> None:
    from pymongo.errors import BulkWriteError

    from mongo_job_queue.store import is_transient

    wce = {"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "timed out"}], "nMatched": 4}
    assert is_transient(BulkWriteError(wce))
    rejected = {"writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}], "writeConcernErrors": []}
    assert not is_transient(BulkWriteError(rejected))
    both = {"writeErrors": [{"index": 0, "code": 2, "errmsg": "bad"}], "writeConcernErrors": [{"code": 64}]}
    assert not is_transient(BulkWriteError(both))
