"""The effective write and read concerns of the jobs collection, and what a weak one risks."""

from __future__ import annotations

from typing import Any

from pymongo import ReadPreference

from .checks import FAIL, PASS, WARN, Check
from .probe import Probe

__all__ = ["check_read_concern", "check_write_concern", "effective_write_concern"]

_RISK = (
    "a write acknowledged by the primary alone is rolled back when it fails over before replicating: "
    "an acknowledged enqueue is lost, a rolled-back claim or completion runs the job twice"
)


def effective_write_concern(probe: Probe) -> tuple[dict[str, Any], str]:
    """The write concern the queue's writes get, and where it comes from (client, cluster default, implicit)."""
    own = dict(probe.collection.write_concern.document)
    if "w" in own:
        return own, "set by the app's connection or the model"
    defaults = probe.default_rw_concern()
    cluster = dict((defaults or {}).get("defaultWriteConcern") or {})
    if "w" in cluster:
        return {**cluster, **own}, "the cluster-wide default (setDefaultRWConcern)"
    if probe.defaults_refused is not None:
        return own, f"cannot tell: the cluster-wide default is unreadable here ({probe.defaults_refused})"
    version = probe.version
    if version and version < (5, 0):
        return {"w": 1, **own}, f"the implicit default of MongoDB {'.'.join(map(str, version))}"
    arbiters = len(probe.hello.get("arbiters") or [])
    members = len(probe.hello.get("hosts") or []) + len(probe.hello.get("passives") or [])
    if arbiters and members <= (members + arbiters) // 2 + 1:
        return {"w": 1, **own}, "the implicit default of a replica set whose arbiter leaves no data-bearing majority"
    return {"w": "majority", **own}, "the implicit default (MongoDB 5.0+)"


def check_write_concern(probe: Probe) -> Check:
    """``w:majority`` (or a count above 1) keeps acknowledged writes through a failover; ``w:1`` does not."""
    concern, source = effective_write_concern(probe)
    w = concern.get("w")
    detail = f"w={w!r}" + (f", j={concern['j']!r}" if "j" in concern else "") + f" ({source})"
    if w is None:
        return Check(
            "write concern",
            WARN,
            f"{source}: w:1 would let a failover roll back acknowledged writes",
            "connect with w='majority' explicitly, or let the doctor's user run getDefaultRWConcern "
            "(clusterMonitor role)",
        )
    if w == 0:
        return Check(
            "write concern",
            FAIL,
            f"{detail}: writes are not acknowledged, so no fenced write can tell it lost its lease",
            "connect with w='majority'",
        )
    if w == 1 and probe.has_failover:
        return Check("write concern", FAIL, f"{detail}: {_RISK}", "connect with w='majority' (or drop the w=1)")
    if concern.get("j") is False and probe.has_failover:
        return Check(
            "write concern",
            WARN,
            f"{detail}: acknowledged before the journal; a crash of every member at once loses the last writes",
            "drop j=False",
        )
    if w == 1:
        return Check("write concern", PASS, f"{detail}: a standalone server has no failover to roll back writes")
    return Check("write concern", PASS, detail)


def check_read_concern(probe: Probe) -> Check:
    """Claims and outcomes are writes (their concern is the write concern); this is about the app's reads.

    With read preference ``primary`` and read concern ``local`` (the default)
    a status or result read can show a write that a failover later rolls
    back; ``majority`` avoids that at some latency. Reads from secondaries
    see stale jobs: the claim-batch candidate read would pick jobs others
    already took, and a status read lags.
    """
    level = probe.collection.read_concern.level
    if level is None:
        defaults = probe.default_rw_concern() or {}
        level = (defaults.get("defaultReadConcern") or {}).get("level")
    level_text = level or "local (the default)"
    preference = probe.collection.read_preference
    if preference != ReadPreference.PRIMARY:
        return Check(
            "read concern",
            FAIL,
            f"read preference {preference.name}, read concern {level_text}: the queue's reads go to secondaries",
            "use readPreference=primary for the queue's connection (a separate alias for reporting reads)",
        )
    if level == "available":
        return Check(
            "read concern",
            WARN,
            "read concern available: reads may return orphaned documents on a sharded cluster",
            "use local or majority",
        )
    if level in (None, "local") and probe.has_failover:
        return Check(
            "read concern",
            PASS,
            f"primary, {level_text}: status and result reads may show a write a failover later rolls back",
        )
    return Check("read concern", PASS, f"primary, {level_text}")
