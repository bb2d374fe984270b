"""Checks of the deployment's shape: replica set, change streams, oplog window, server version."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from .checks import FAIL, PASS, WARN, Check
from .probe import Probe

__all__ = [
    "KNOWN_ISSUES",
    "OPLOG_WINDOW_WARN",
    "check_change_streams",
    "check_oplog_window",
    "check_server_version",
    "check_topology",
    "judge_oplog",
]

#: Below this the oplog window warns: MongoDB's own guidance for an oplog that
#: rides out a member's maintenance or outage without a full resync.
OPLOG_WINDOW_WARN = timedelta(hours=24)

#: Server versions with a known issue for the queue: (below this version, what, source).
#: Kept to what the MongoDB manual states; it is not a list of every server bug.
KNOWN_ISSUES: tuple[tuple[tuple[int, ...], str, str], ...] = (
    (
        (4, 4),
        "no cluster-wide default read/write concern (setDefaultRWConcern came in 4.4): "
        "every client must set w='majority' itself",
        "MongoDB manual, Write Concern",
    ),
    (
        (5, 0),
        "the implicit default write concern is w:1 (w:'majority' from 5.0): a failover can roll back "
        "acknowledged claims and outcomes unless the client sets w='majority'",
        "MongoDB manual, Default MongoDB Read Concerns/Write Concerns",
    ),
)


def check_topology(probe: Probe) -> Check:
    """A replica set (or a sharded cluster) keeps jobs through the loss of a server; a standalone does not."""
    hello = probe.hello
    if probe.is_sharded:
        return Check("topology", PASS, "sharded cluster (connected to mongos)")
    if probe.is_replica_set:
        members = len(hello.get("hosts") or []) + len(hello.get("passives") or [])
        arbiters = len(hello.get("arbiters") or [])
        detail = f"replica set {hello['setName']!r}, {members} data-bearing member(s)"
        if arbiters:
            detail += f", {arbiters} arbiter(s)"
        if members < 3:
            return Check(
                "topology",
                WARN,
                detail,
                "fewer than 3 data-bearing members: losing one loses the majority, or the only copy; "
                "run 3 data-bearing members in production",
            )
        return Check("topology", PASS, detail)
    return Check(
        "topology",
        FAIL,
        "standalone server: no failover, no second copy of the jobs, no change streams",
        "run a replica set (even a one-member one gives change streams; three members keep jobs through a crash)",
    )


def check_change_streams(probe: Probe) -> Check:
    """Workers wake on a change stream; without one they poll, which costs commands and latency."""
    try:
        with probe.store.bounded(), probe.collection.watch(max_await_time_ms=1) as stream:
            stream.try_next()
    except PyMongoError as exc:
        return Check(
            "change streams",
            WARN,
            f"unavailable ({_reason(exc)}): workers poll instead",
            "new jobs wait up to poll_interval_max_ms and idle workers cost more commands; "
            "a replica set provides change streams",
        )
    return Check("change streams", PASS, "available: idle workers wake on inserts instead of polling")


def check_oplog_window(probe: Probe) -> Check:
    """The time the oplog spans: what a lagging member or a resuming change stream can catch up on.

    It fails below the queue's lease: a worker whose change stream was cut for
    one lease could not resume it, and a secondary that lags by a lease (the
    time the queue lets a silent worker keep its job) would need a full
    resync. It warns below :data:`OPLOG_WINDOW_WARN`. An oplog not yet full
    has not reached its window: it passes with what it spans so far.
    """
    if not probe.is_replica_set:
        return Check("oplog window", PASS, "no oplog to check (not a replica set member)")
    lease = timedelta(milliseconds=probe.store.config.lease_ms)
    local = probe.database.client.get_database("local")
    try:
        with probe.store.bounded():
            oplog = local.get_collection("oplog.rs")
            first = oplog.find_one({}, {"ts": 1}, sort=[("$natural", 1)])
            last = oplog.find_one({}, {"ts": 1}, sort=[("$natural", -1)])
            stats: dict[str, Any] = local.command("collStats", "oplog.rs")
    except OperationFailure as exc:
        return Check(
            "oplog window",
            WARN,
            f"cannot read local.oplog.rs ({_reason(exc)})",
            "check it with rs.printReplicationInfo(); it should span 24 h or more, and never less than "
            f"the lease ({lease.total_seconds():g} s)",
        )
    if not first or not last:
        return Check("oplog window", WARN, "the oplog is empty", "check it with rs.printReplicationInfo()")
    window = timedelta(seconds=last["ts"].time - first["ts"].time)
    return judge_oplog(window, stats.get("size") or 0, stats.get("maxSize") or 0, lease)


def judge_oplog(window: timedelta, size: float, cap: float, lease: timedelta) -> Check:
    """The oplog window check's verdict on what was read (see :func:`check_oplog_window`)."""
    detail = f"{window.total_seconds() / 3600:.1f} h between the oldest and newest entries"
    if cap and size < 0.9 * cap:
        return Check("oplog window", PASS, f"{detail}; not full yet ({size / cap:.0%} of its size): it still grows")
    action = "grow the oplog (replSetResizeOplog) or set storage.oplogMinRetentionHours"
    if window < lease:
        return Check("oplog window", FAIL, f"{detail}, shorter than the lease ({lease.total_seconds():g} s)", action)
    if window < OPLOG_WINDOW_WARN:
        return Check("oplog window", WARN, f"{detail}, under 24 h", action)
    return Check("oplog window", PASS, detail)


def check_server_version(probe: Probe) -> Check:
    """The server's version against :data:`KNOWN_ISSUES`."""
    version = probe.version
    text = str(probe.build_info.get("version", "unknown"))
    if not version:
        return Check("server version", WARN, f"the server reports no version ({text!r})", "check it by hand")
    issues = [f"{what} [{source}]" for below, what, source in KNOWN_ISSUES if version < below]
    if issues:
        return Check("server version", WARN, f"{text}: " + "; ".join(issues), "upgrade, or mind the issues listed")
    return Check("server version", PASS, f"{text}: no known issue in the doctor's table")


def _reason(exc: PyMongoError) -> str:
    details = getattr(exc, "details", None) or {}
    return str(details.get("errmsg") or exc).split(", full error")[0]
