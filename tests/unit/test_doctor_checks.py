"""The doctor's decisions on server replies no test server gives: old versions, arbiters, cluster defaults."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from mongoengine import StringField
from pymongo import WriteConcern

from mongo_job_queue import BaseJob
from mongo_job_queue.doctor import FAIL, PASS, WARN
from mongo_job_queue.doctor.concerns import check_write_concern, effective_write_concern
from mongo_job_queue.doctor.probe import Probe
from mongo_job_queue.doctor.sharding import check_shard_key
from mongo_job_queue.doctor.topology import check_server_version, check_topology, judge_oplog
from mongo_job_queue.store.shardkey import ShardKey


class _Collection:
    def __init__(self, **concern: Any) -> None:
        self.write_concern = WriteConcern(**concern)


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
