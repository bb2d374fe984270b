"""Each server behaviour the library relies on, checked by name.

A test server's or an old mongod's deviation then shows up here as one clear
failure instead of as a flaky queue test. Known deviation of the embedded
server, which the library therefore does not rely on: ``$expr`` comparisons
against ``$$NOW`` (and field-to-field date comparisons) in query filters
match every document. The queue compares against literal times in filters
and uses ``$$NOW`` only in pipeline updates, both checked below. Another,
which only costs the embedded server commands: it ends an awaited
change-stream ``getMore`` at any write to the database, even one the
stream's ``$match`` leaves out, where a mongod waits on (docs/scaling.rst);
the queue is correct either way (an empty batch is read again).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pymongo
import pytest
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, ExecutionTimeout, NotPrimaryError, PyMongoError

pytestmark = pytest.mark.integration


@pytest.fixture
def coll(raw_db):
    collection = raw_db["conformance"]
    collection.drop()
    yield collection
    collection.drop()


def test_find_one_and_update_is_atomic_under_concurrent_claimers(coll, mongodb_uri) -> None:
    coll.insert_many([{"n": n, "status": "pending"} for n in range(120)])
    claims: list[int] = []
    lock = threading.Lock()

    def claimer() -> None:
        with MongoClient(mongodb_uri) as client:
            mine = client[coll.database.name][coll.name]
            while True:
                doc = mine.find_one_and_update({"status": "pending"}, {"$set": {"status": "processing"}})
                if doc is None:
                    return
                with lock:
                    claims.append(doc["n"])

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(claims) == list(range(120))


def test_sort_by_priority_desc_then_run_at_asc_with_in_filters(coll) -> None:
    coll.create_index([("status", 1), ("queue", 1), ("type", 1), ("priority", -1), ("run_at", 1)])
    t0 = datetime(2030, 1, 1)
    rows = [("a", 0, 3), ("b", 5, 2), ("c", 5, 1), ("d", 1, 0), ("e", 9, 9)]
    coll.insert_many(
        [
            {"name": n, "status": "pending", "queue": q, "type": "T", "priority": p, "run_at": t0 + timedelta(s)}
            for (n, p, s), q in zip(rows, ["q1", "q2", "q1", "q2", "q1"], strict=False)
        ]
    )
    order = []
    while True:
        doc = coll.find_one_and_update(
            {
                "status": "pending",
                "queue": {"$in": ["q1", "q2"]},
                "type": {"$in": ["T"]},
                "run_at": {"$lte": t0 + timedelta(8)},
            },
            {"$set": {"status": "processing"}},
            sort=[("priority", DESCENDING), ("run_at", ASCENDING)],
        )
        if doc is None:
            break
        order.append(doc["name"])
    assert order == ["c", "b", "d", "a"]  # "e" is not due yet


def test_return_document_after_includes_inc_and_set(coll) -> None:
    coll.insert_one({"_id": 1, "attempts": 0})
    doc = coll.find_one_and_update(
        {"_id": 1}, {"$set": {"token": "t"}, "$inc": {"attempts": 1}}, return_document=ReturnDocument.AFTER
    )
    assert doc == {"_id": 1, "attempts": 1, "token": "t"}


def test_pipeline_update_with_now_sets_server_time(coll) -> None:
    coll.insert_one({"_id": 1})
    before = datetime.utcnow() - timedelta(minutes=5)
    coll.update_one({"_id": 1}, [{"$set": {"at": "$$NOW", "later": {"$add": ["$$NOW", 5000]}}}])
    doc = coll.find_one({"_id": 1})
    assert isinstance(doc["at"], datetime)
    assert doc["at"] > before
    assert doc["later"] - doc["at"] == timedelta(seconds=5)


def test_literal_date_range_filters(coll) -> None:
    t0 = datetime(2030, 1, 1)
    coll.insert_many([{"n": i, "at": t0 + timedelta(seconds=i)} for i in range(5)])
    assert sorted(d["n"] for d in coll.find({"at": {"$lt": t0 + timedelta(seconds=2)}})) == [0, 1]
    assert coll.count_documents({"at": {"$lte": t0 + timedelta(seconds=2)}}) == 3


def test_fenced_update_matches_only_with_the_right_token_and_status(coll) -> None:
    coll.insert_one({"_id": 1, "status": "processing", "lease_token": "a"})
    assert (
        coll.update_one({"_id": 1, "lease_token": "b", "status": "processing"}, {"$set": {"x": 1}}).matched_count == 0
    )
    assert coll.update_one({"_id": 1, "lease_token": "a", "status": "pending"}, {"$set": {"x": 1}}).matched_count == 0
    assert (
        coll.update_one({"_id": 1, "lease_token": "a", "status": "processing"}, {"$set": {"x": 1}}).matched_count == 1
    )


def test_push_each_slice_keeps_the_newest_entries(coll) -> None:
    coll.insert_one({"_id": 1, "errors": []})
    for i in range(5):
        coll.update_one({"_id": 1}, {"$push": {"errors": {"$each": [i], "$slice": -3}}})
    assert coll.find_one({"_id": 1})["errors"] == [2, 3, 4]


def test_unset_and_negative_inc(coll) -> None:
    coll.insert_one({"_id": 1, "attempts": 2, "lease_expires_at": datetime(2030, 1, 1)})
    coll.update_one({"_id": 1}, {"$inc": {"attempts": -1}, "$unset": {"lease_expires_at": ""}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "attempts": 1}


def test_bulk_write_reports_matched_counts(coll) -> None:
    coll.insert_many([{"_id": i, "t": f"t{i}"} for i in range(3)])
    result = coll.bulk_write(
        [UpdateOne({"_id": 0, "t": "t0"}, {"$set": {"x": 1}}), UpdateOne({"_id": 1, "t": "wrong"}, {"$set": {"x": 1}})],
        ordered=False,
    )
    assert result.matched_count == 1


def test_duplicate_id_error_names_the_id_key(coll) -> None:
    oid = ObjectId()
    coll.insert_one({"_id": oid})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"_id": oid})
    details = info.value.details or {}
    assert details.get("keyPattern") == {"_id": 1} or "_id_" in details.get("errmsg", "")


def test_ordered_insert_many_stops_at_the_first_rejected_document(coll) -> None:
    coll.create_index("k", unique=True)
    coll.insert_one({"k": 2})
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"k": 1}, {"k": 2}, {"k": 3}], ordered=True)
    assert info.value.details["nInserted"] == 1
    assert info.value.details["writeErrors"][0]["index"] == 1
    assert sorted(d["k"] for d in coll.find()) == [1, 2]


def test_partial_and_ttl_index_creation(coll) -> None:
    coll.create_index([("finished_at", 1)], expireAfterSeconds=3600, name="ttl")
    coll.create_index([("lease_expires_at", 1)], partialFilterExpression={"status": "processing"}, name="partial")
    info = coll.index_information()
    assert info["ttl"]["expireAfterSeconds"] == 3600
    assert info["partial"]["partialFilterExpression"] == {"status": "processing"}


def test_compound_index_with_descending_key_is_created(coll) -> None:
    coll.create_index([("status", 1), ("queue", 1), ("type", 1), ("priority", -1), ("run_at", 1)], name="claim")
    assert coll.index_information()["claim"]["key"] == [
        ("status", 1),
        ("queue", 1),
        ("type", 1),
        ("priority", -1),
        ("run_at", 1),
    ]


def test_fail_command_failpoint_is_available(raw_db, mongodb_uri) -> None:
    admin = raw_db.client.admin
    admin.command("configureFailPoint", "failCommand", mode="off")
    admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": 1},
        data={"failCommands": ["ping"], "errorCode": 189, "appName": "conformance-check"},
    )
    with MongoClient(mongodb_uri, appname="conformance-check", heartbeatFrequencyMS=500) as client:
        with pytest.raises(NotPrimaryError) as info:
            client.admin.command("ping")
        assert (info.value.details or {}).get("code") == 189
        assert client.admin.command("ping")["ok"] == 1.0


def test_hello_reports_the_server_clock(raw_db) -> None:
    """The queue corrects worker clocks by hello.localTime."""
    before = datetime.utcnow()
    local_time = raw_db.client.admin.command("hello")["localTime"]
    after = datetime.utcnow()
    assert isinstance(local_time, datetime)
    # Same host here; on a real cluster NTP keeps this within seconds.
    assert before - timedelta(seconds=5) <= local_time.replace(tzinfo=None) <= after + timedelta(seconds=5)


# -- what schedules rely on ---------------------------------------------------


def test_sparse_compound_unique_index_names_its_key_and_ignores_documents_without_it(coll) -> None:
    coll.create_index([("schedule", ASCENDING), ("fire_time", ASCENDING)], unique=True, sparse=True, name="sched")
    fire = datetime(2026, 1, 1, 10)
    coll.insert_many([{"n": 1}, {"n": 2}])  # no schedule fields: not indexed, no conflict
    coll.insert_one({"schedule": "s", "fire_time": fire})
    coll.insert_one({"schedule": "s", "fire_time": fire + timedelta(hours=1)})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"schedule": "s", "fire_time": fire})
    assert list((info.value.details or {}).get("keyPattern") or {})[:1] == ["schedule"]


def test_max_on_a_nested_date_only_moves_forward_and_upserts(coll) -> None:
    early, late = datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)
    coll.update_one({"_id": "schedule:s"}, {"$max": {"handled.abc": late}}, upsert=True)
    coll.update_one({"_id": "schedule:s"}, {"$max": {"handled.abc": early}}, upsert=True)
    assert coll.find_one({"_id": "schedule:s"})["handled"] == {"abc": late}


def test_max_in_a_fenced_bulk_renewal_and_on_a_positional_array_element(coll) -> None:
    # Lease renewals and limiter holders only move forward: a late try must not shorten them.
    early, late = datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)
    coll.insert_one({"_id": 1, "token": "t", "expires": late, "holders": [{"job": 1, "until": late}]})
    renew = UpdateOne({"_id": 1, "token": "t"}, {"$max": {"expires": early}, "$set": {"progress": {"n": 1}}})
    assert coll.bulk_write([renew]).matched_count == 1  # matched, though nothing moved back
    coll.update_one({"_id": 1, "holders": {"$elemMatch": {"job": 1}}}, {"$max": {"holders.$.until": early}})
    doc = coll.find_one({"_id": 1})
    assert (doc["expires"], doc["holders"][0]["until"], doc["progress"]) == (late, late, {"n": 1})


def test_an_upsert_whose_filter_misses_an_existing_id_raises_duplicate_key(coll) -> None:
    # start_schedule relies on it: the first process's baseline stands.
    first, second = datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)
    path = "handled.abc"
    coll.update_one({"_id": "schedule:s", path: {"$exists": False}}, {"$set": {path: first}}, upsert=True)
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"_id": "schedule:s", path: {"$exists": False}}, {"$set": {path: second}}, upsert=True)
    coll.update_one({"_id": "schedule:s", "handled.xyz": {"$exists": False}}, {"$set": {"handled.xyz": second}})
    assert coll.find_one({"_id": "schedule:s"})["handled"] == {"abc": first, "xyz": second}


# -- what the time bound of every call (db_timeout_ms) relies on ----------------


def test_commands_under_a_client_side_timeout_carry_max_time_ms_and_succeed(coll) -> None:
    """pymongo.timeout sends the remaining time as maxTimeMS on every command the queue sends."""
    with pymongo.timeout(5):
        coll.insert_one({"_id": 1, "status": "pending", "n": 0})
        coll.insert_many([{"_id": 2, "status": "pending"}])
        assert coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER)["n"] == 1
        assert coll.update_one({"_id": 1}, {"$set": {"status": "processing"}}).matched_count == 1
        assert coll.bulk_write([UpdateOne({"_id": 2}, {"$set": {"x": 1}})]).matched_count == 1
        assert len(list(coll.find({"status": {"$in": ["pending", "processing"]}}))) == 2
        assert coll.count_documents({"status": "pending"}) == 1
        assert next(iter(coll.aggregate([{"$match": {"_id": 1}}])))["n"] == 1
        assert coll.database.command("hello")["ok"] == 1.0


def test_max_time_ms_is_enforced_on_a_long_command(coll) -> None:
    coll.insert_many([{"n": n, "pad": "x" * 100} for n in range(3000)])
    with pytest.raises(ExecutionTimeout) as info:
        # $where-free slow scan: a tiny budget on a collection scan with a regex on every document.
        list(coll.find({"pad": {"$regex": "^(x+x+)+y$"}}).max_time_ms(1))
    assert info.value.timeout


def test_a_client_side_timeout_cuts_a_stalled_command_and_the_next_call_succeeds(raw_db, mongodb_uri) -> None:
    """A connection the server holds (as a partition would) fails within the bound; a fresh one works."""
    admin = raw_db.client.admin
    admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": 1},
        data={"failCommands": ["find"], "blockConnection": True, "blockTimeMS": 5_000, "appName": "conformance-block"},
    )
    try:
        with MongoClient(mongodb_uri, appname="conformance-block") as client:
            coll = client[raw_db.name]["conformance"]
            started = time.monotonic()
            with pytest.raises(PyMongoError) as info, pymongo.timeout(0.5):
                coll.find_one({})
            assert info.value.timeout
            assert time.monotonic() - started < 3.0
            with pymongo.timeout(5):
                coll.find_one({})
    finally:
        admin.command("configureFailPoint", "failCommand", mode="off")


def test_a_change_stream_read_waits_max_await_time_ms_within_a_longer_timeout(coll) -> None:
    """The wake-up thread's long poll: the getMore returns empty after maxAwaitTimeMS, not a timeout."""
    with pymongo.timeout(5):
        stream = coll.watch(max_await_time_ms=500)
    try:
        started = time.monotonic()
        with pymongo.timeout(0.5 + 5):
            assert stream.try_next() is None
        assert 0.3 <= time.monotonic() - started < 5.0
        with pymongo.timeout(5):
            coll.insert_one({"n": 1})
        with pymongo.timeout(0.5 + 5):
            change = stream.try_next() or stream.try_next()
        assert change is not None and change["operationType"] == "insert"
    finally:
        stream.close()


def test_a_transaction_inserts_all_or_nothing(coll) -> None:
    # A workflow graph is inserted in one transaction (store/dependencies.py insert_all).
    coll.insert_one({"_id": "taken"})
    client = coll.database.client
    with client.start_session() as session:
        session.with_transaction(lambda s: coll.insert_many([{"_id": 1}, {"_id": 2}], session=s))
    assert sorted(d["_id"] for d in coll.find({"_id": {"$in": [1, 2]}})) == [1, 2]
    with pytest.raises(PyMongoError), client.start_session() as session:
        session.with_transaction(lambda s: coll.insert_many([{"_id": 3}, {"_id": "taken"}], ordered=True, session=s))
    assert coll.count_documents({"_id": 3}) == 0  # the first insert of the failed transaction was rolled back
