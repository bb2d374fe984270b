"""The doctor's decisions on server replies no test server gives: old versions, arbiters, cluster defaults."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest
from mongoengine import StringField
from pymongo import WriteConcern
from pymongo.errors import OperationFailure

from mongo_job_queue import BaseJob
from mongo_job_queue.doctor import FAIL, PASS, WARN, sharding
from mongo_job_queue.doctor.concerns import check_write_concern, effective_write_concern
from mongo_job_queue.doctor.indexes import _only_finished
from mongo_job_queue.doctor.probe import Probe
from mongo_job_queue.doctor.sharding import check_shard_key
from mongo_job_queue.doctor.topology import check_server_version, check_topology, judge_oplog
from mongo_job_queue.store.indexes import declared_indexes, index_mismatch
from mongo_job_queue.store.shardkey import ShardKey


class _Collection:
    def __init__(self, **concern: Any) -> None:
        self.write_concern = WriteConcern(**concern)
        self.name = "jobs"


class FakeProbe(Probe):
    """A probe whose server replies are given, not read."""

    def __init__(
        self,
        *,
        hello: Mapping[str, Any],
        version: str = "7.0.12",
        defaults: Mapping[str, Any] | None = None,
        **concern: Any,
    ) -> None:
        self.__dict__.update(
            hello=dict(hello),
            build_info={"version": version, "versionArray": [int(p) for p in version.split(".")]},
            collection=_Collection(**concern),
        )
        self._defaults = defaults

    def default_rw_concern(self) -> Mapping[str, Any] | None:
        return self._defaults


RS = {"setName": "rs0", "hosts": ["a:1", "b:1", "c:1"]}


def test_old_servers_warn_with_their_known_issues_and_new_ones_pass() -> None:
    old = check_server_version(FakeProbe(hello=RS, version="4.2.24"))
    assert old.status == WARN and "4.4" in old.detail and "w:1" in old.detail
    assert check_server_version(FakeProbe(hello=RS, version="7.0.12")).status == PASS


def test_the_implicit_default_is_w1_before_5_0_and_with_an_arbiter_majority() -> None:
    assert effective_write_concern(FakeProbe(hello=RS, version="4.4.29"))[0]["w"] == 1
    psa = {"setName": "rs0", "hosts": ["a:1", "b:1"], "arbiters": ["c:1"]}
    assert effective_write_concern(FakeProbe(hello=psa))[0]["w"] == 1
    assert check_write_concern(FakeProbe(hello=psa)).status == FAIL
    assert effective_write_concern(FakeProbe(hello=RS))[0]["w"] == "majority"


def test_the_cluster_default_applies_unless_the_client_sets_w() -> None:
    cluster = {"defaultWriteConcern": {"w": 1}}
    assert check_write_concern(FakeProbe(hello=RS, defaults=cluster)).status == FAIL
    assert check_write_concern(FakeProbe(hello=RS, defaults=cluster, w="majority")).status == PASS
    assert check_write_concern(FakeProbe(hello={}, w=1)).status == PASS  # standalone: nothing to roll back
    assert check_write_concern(FakeProbe(hello={}, w=0)).status == FAIL


def test_topology() -> None:
    assert check_topology(FakeProbe(hello=RS)).status == PASS
    assert check_topology(FakeProbe(hello={"setName": "rs0", "hosts": ["a:1"]})).status == WARN
    assert check_topology(FakeProbe(hello={"msg": "isdbgrid"})).status == PASS
    assert check_topology(FakeProbe(hello={})).status == FAIL


class ByTenant(BaseJob):
    tenant = StringField()
    meta = {"collection": "unit_doctor_tenant", "shard_key": ("tenant", "id")}


class ByQueue(BaseJob):
    meta = {"collection": "unit_doctor_queue", "shard_key": ("queue", "id")}


class _Store:
    def __init__(self, key: ShardKey) -> None:
        self.shard_key = key


def test_a_declared_key_that_cannot_target_the_claim_warns_before_the_collection_is_sharded() -> None:
    probe = FakeProbe(hello=RS)
    probe.store = _Store(ShardKey(ByTenant))  # type: ignore[assignment]
    assert check_shard_key(probe).status == WARN
    probe.store = _Store(ShardKey(ByQueue))  # type: ignore[assignment]
    assert check_shard_key(probe).status == PASS


def test_the_oplog_window_against_the_lease_and_a_day() -> None:
    lease, hour = timedelta(minutes=1), timedelta(hours=1)
    assert judge_oplog(timedelta(seconds=30), 99, 100, lease).status == FAIL
    assert judge_oplog(2 * hour, 99, 100, lease).status == WARN
    assert judge_oplog(30 * hour, 99, 100, lease).status == PASS
    growing = judge_oplog(timedelta(seconds=30), 10, 100, lease)  # not full: its window is not reached yet
    assert growing.status == PASS and "not full yet" in growing.detail


class RefusingProbe(FakeProbe):
    """A least-privilege user: ``getDefaultRWConcern`` is refused (as :meth:`Probe.default_rw_concern` records)."""

    def default_rw_concern(self) -> Mapping[str, Any] | None:
        self.defaults_refused = "not authorized on admin to execute command"
        return None


def test_refused_cluster_defaults_are_unknown_not_majority() -> None:
    check = check_write_concern(RefusingProbe(hello=RS))
    assert check.status == WARN and "cannot tell" in check.detail
    assert check_write_concern(RefusingProbe(hello=RS, w="majority")).status == PASS  # the app's own w decides


def test_a_refused_config_read_warns_that_it_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(probe: Probe) -> None:
        raise OperationFailure("not authorized on config", code=13)

    monkeypatch.setattr(sharding, "_cluster_key", refused)
    probe = FakeProbe(hello={"msg": "isdbgrid"})
    probe.store = _Store(ShardKey(ByQueue))  # type: ignore[assignment]
    check = check_shard_key(probe)
    assert check.status == WARN and "cannot tell" in check.detail


@pytest.mark.parametrize(
    ("keys", "status"),
    [(None, PASS), ({"_id": 1}, PASS), ({"_id": "hashed"}, PASS), ({"job": 1}, FAIL)],
    ids=["keys-unsharded", "keys-on-id", "keys-hashed-id", "keys-on-other"],
)
def test_the_key_documents_must_stay_unique_by_id(monkeypatch: pytest.MonkeyPatch, keys: Any, status: str) -> None:
    def cluster_key(probe: Probe, suffix: str = "") -> Any:
        return keys if suffix == "_keys" else {"queue": 1, "_id": 1}

    monkeypatch.setattr(sharding, "_cluster_key", cluster_key)
    probe = FakeProbe(hello={"msg": "isdbgrid"})
    probe.store = _Store(ShardKey(ByQueue))  # type: ignore[assignment]
    check = check_shard_key(probe)
    assert check.status == status, check


def test_ttl_filters_limited_to_finished_statuses_are_safe() -> None:
    assert _only_finished({"status": "completed"}) and _only_finished({"status": {"$eq": "failed"}})
    assert _only_finished({"status": {"$in": ["completed", "failed"]}})
    assert not _only_finished({"status": {"$in": ["completed", "pending"]}}) and not _only_finished(
        {"status": {"$in": []}}
    )
    assert not _only_finished({"status": {"$ne": "pending"}}) and not _only_finished(None)
    assert not _only_finished({"status": "processing"})


class WithText(BaseJob):
    title = StringField()
    meta = {"collection": "unit_doctor_text", "indexes": [{"name": "app_title", "fields": ["$title"]}]}


def test_an_index_matches_by_key_unique_sparse_and_partial_filter_as_create_index_compares() -> None:
    declared = declared_indexes(WithText)
    unique = declared["mjq_unique"]
    assert index_mismatch({"key": {"unique_key": 1}, "unique": True, "sparse": True}, unique) is None
    assert "sparse" in str(index_mismatch({"key": {"unique_key": 1}, "unique": True}, unique))
    assert "unique" in str(index_mismatch({"key": {"unique_key": 1}, "sparse": True}, unique))
    assert index_mismatch(None, unique) == "missing"
    partial = {"key": {"unique_key": 1}, "unique": True, "sparse": True, "partialFilterExpression": {"a": 1}}
    assert "partialFilterExpression" in str(index_mismatch(partial, unique))
    text = declared_indexes(WithText)["app_title"]
    assert index_mismatch({"key": {"_fts": "text", "_ftsx": 1}, "weights": {"title": 1}}, text) is None
