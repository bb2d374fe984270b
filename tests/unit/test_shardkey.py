"""The shard key helper: which filters it adds the key to, and which it leaves alone."""

from __future__ import annotations

from typing import Any

import mongomock
from bson import ObjectId
from mongoengine import StringField

from mongo_job_queue import BaseJob
from mongo_job_queue.store.shardkey import ShardKey


class Plain(BaseJob):
    meta = {"collection": "unit_shard_plain"}


class ByOrg(BaseJob):
    org = StringField(db_field="o")
    meta = {"collection": "unit_shard_org", "shard_key": ("org", "id")}


def _jobs() -> Any:
    return mongomock.MongoClient()["unit"]["jobs"]


def test_without_a_declared_key_nothing_changes() -> None:
    key = ShardKey(Plain)
    assert not key and key.of({"_id": 1, "queue": "q"}) == {}
    filt = {"_id": 1}
    assert key.scope(filt, _jobs()) is filt
    assert key.targeted(filt, [{}]) is filt


def test_declared_fields_are_stored_names_and_only_queue_first_targets_the_claim() -> None:
    key = ShardKey(ByOrg)
    assert key.fields == ("o", "_id") and not key.targets_claim


def test_an_admin_filter_reads_the_current_values_each_time() -> None:
    key, jobs = ShardKey(ByOrg), _jobs()
    a, unknown = ObjectId(), ObjectId()
    jobs.insert_one({"_id": a, "o": "acme"})
    assert key.scope({"_id": a, "status": "failed"}, jobs) == {"_id": a, "status": "failed", "o": "acme"}
    jobs.update_one({"_id": a}, {"$set": {"o": "beta"}})  # nothing remembered: the new value is read
    assert key.scope({"_id": a}, jobs) == {"_id": a, "o": "beta"}
    assert key.scope({"_id": unknown}, jobs) == {"_id": unknown}
    assert key.scope({"_id": {"$gt": a}}, jobs) == {"_id": {"$gt": a}}


def test_many_jobs_are_targeted_by_the_values_their_runs_carry() -> None:
    key = ShardKey(ByOrg)
    a, b = ObjectId(), ObjectId()
    keys = [key.of({"_id": a, "o": "acme"}), key.of({"_id": b, "o": "beta"})]
    assert key.targeted({"_id": {"$in": [a, b]}}, keys) == {"_id": {"$in": [a, b]}, "o": {"$in": ["acme", "beta"]}}
    assert key.targeted({"_id": {"$in": [a, b]}}, [keys[0], {}]) == {"_id": {"$in": [a, b]}}  # one unknown


def test_a_document_missing_a_key_field_gives_no_partial_key() -> None:
    key, jobs = ShardKey(ByOrg), _jobs()
    job = ObjectId()
    jobs.insert_one({"_id": job})
    assert key.of({"_id": job}) == {}
    assert key.scope({"_id": job}, jobs) == {"_id": job}
