"""The concurrency slots of a limiter document: its ``holders``, taken and left with atomic updates.

A run takes a slot with one conditional ``$push`` that matches only while
fewer than ``max_running`` holders are listed, so concurrent claimers never
overshoot. A full limiter may list holders whose ``until`` passed (their
worker died, or its heartbeat is late): such a holder is dropped only once
its run can no longer write (:func:`_gone`), then the push is tried again.
Each step is safe to run again inside the claim's retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..limits import Limit
from ..status import PROCESSING

__all__ = ["drop_gone", "live", "pull", "push"]

#: The prefix of a lease token replaced because its holder lapsed (see :func:`_gone`).
_REVOKED = "revoked:"


def live(doc: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The holders of a limiter document whose ``until`` has not passed."""
    return [h for h in doc.get("holders") or [] if h.get("until") is not None and h["until"] >= now]


def push(
    limiters: Collection[dict[str, Any]],
    jobs: Collection[dict[str, Any]],
    lid: str,
    limit: Limit,
    value: Any,
    holder: Mapping[str, Any],
    now: datetime,
) -> bool:
    """One conditional ``$push``: admitted only while fewer than ``max_running`` holders are listed."""
    assert limit.max_running is not None
    room = {"_id": lid, f"holders.{limit.max_running - 1}": {"$exists": False}}
    add = {"$addToSet": {"holders": dict(holder)}, "$setOnInsert": {"limit": limit.name, "value": value}}
    for _ in range(2):
        try:
            if limiters.update_one(room, add, upsert=True).matched_count:
                return True
        except DuplicateKeyError:
            pass  # it exists and is full: the upsert tried to insert a second one
        else:
            return True  # upserted: the first holder
        found = limiters.find_one({"_id": lid})
        if found is None:
            continue  # emptied and swept meanwhile (limiter_sweep.py): the upsert creates it afresh
        holders = found.get("holders") or []
        if any(h.get("job") == holder["job"] and h.get("token") == holder["token"] for h in holders):
            return True  # an earlier try of ours, whose reply was lost
        if not drop_gone(limiters, jobs, found, now):
            return False
        # The holders whose runs are over or fenced out were dropped: try once more.
    return False


def drop_gone(
    limiters: Collection[dict[str, Any]], jobs: Collection[dict[str, Any]], doc: Mapping[str, Any], now: datetime
) -> int:
    """Pull the lapsed holders of the limiter ``doc`` whose runs can no longer write (:func:`_gone`); how many."""
    lapsed = [h for h in doc.get("holders") or [] if h.get("until") is None or h["until"] < now]
    gone = [h for h in lapsed if _gone(jobs, h, now)]
    for h in gone:
        pull(limiters, [doc["_id"]], h.get("job"), h.get("token"))
    return len(gone)


def pull(limiters: Collection[dict[str, Any]], ids: Iterable[str], job_id: ObjectId, token: str) -> None:
    """Take the run ``(job_id, token)`` out of the limiters ``ids``."""
    ops = [UpdateOne({"_id": lid}, {"$pull": {"holders": {"job": job_id, "token": token}}}) for lid in ids]
    if ops:
        limiters.bulk_write(ops, ordered=False)


def _gone(jobs: Collection[dict[str, Any]], holder: Mapping[str, Any], now: datetime) -> bool:
    """Whether a lapsed holder's run can no longer write: its lease is over, or revoked here.

    A holder's ``until`` passing is not enough: a late heartbeat could
    still renew the job's lease under the same token, and the run would
    go on beside the one admitted in its place. So a run whose lease ran
    out is fenced out first (its token replaced, which only the rescue
    sweep then matches: it requeues the job), and a run whose lease is
    still live keeps its holder (its heartbeat extends it).
    """
    fenced = {"_id": holder.get("job"), "lease_token": holder.get("token"), "status": PROCESSING}
    revoke = {"$set": {"lease_token": f"{_REVOKED}{holder.get('token')}"}}
    if jobs.update_one({**fenced, "lease_expires_at": {"$lt": now}}, revoke).matched_count:
        return True
    return jobs.find_one(fenced, {"_id": 1}) is None
