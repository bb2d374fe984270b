"""The shard key helper: which filters it adds the key to, and which it leaves alone."""

from __future__ import annotations

from bson import ObjectId
from mongoengine import StringField

from mongo_job_queue import BaseJob
from mongo_job_queue.store.shardkey import ShardKey


class Plain(BaseJob):
    meta = {"collection": "unit_shard_plain"}


class ByOrg(BaseJob):
    org = StringField(db_field="o")
    meta = {"collection": "unit_shard_org", "shard_key": ("org", "id")}


def test_without_a_declared_key_nothing_changes() -> None:
    key = ShardKey(Plain)
    assert not key and key.of({"_id": 1, "queue": "q"}) == {}
    filt = {"_id": 1}
    assert key.scope(filt) is filt


def test_declared_fields_are_stored_names_and_only_queue_first_targets_the_claim() -> None:
    key = ShardKey(ByOrg)
    assert key.fields == ("o", "_id") and not key.targets_claim


def test_known_jobs_get_their_values_unknown_ones_are_left_to_scatter() -> None:
    key = ShardKey(ByOrg)
    a, b, c = ObjectId(), ObjectId(), ObjectId()
    assert key.of({"_id": a, "o": "acme"}) == {"o": "acme", "_id": a}
    key.of({"_id": b, "o": "beta"})
    assert key.scope({"_id": a, "lease_token": "t"}) == {"_id": a, "lease_token": "t", "o": "acme"}
    assert key.scope({"_id": {"$in": [a, b]}}) == {"_id": {"$in": [a, b]}, "o": {"$in": ["acme", "beta"]}}
    assert key.scope({"_id": {"$in": [a, c]}}) == {"_id": {"$in": [a, c]}}  # one unknown: the filter as it was
    assert key.scope({"_id": {"$gt": a}}) == {"_id": {"$gt": a}}


def test_a_document_missing_a_key_field_gives_no_partial_key() -> None:
    key = ShardKey(ByOrg)
    job = ObjectId()
    assert key.of({"_id": job}) == {}
    assert key.scope({"_id": job}) == {"_id": job}
