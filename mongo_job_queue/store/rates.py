"""The GCRA of a rate limit, kept in its limiter document by server time: one start every interval.

``tat`` (the theoretical arrival time) is the only state; every change is a
compare-and-set on it, so concurrent claimers never spend one start twice.
A claim may also *reserve* the next starts for jobs it read, whose
``run_at`` then becomes their start (see :mod:`.limited_claims`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Optional

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..limits import Limit

__all__ = ["eligible_at", "reserve", "spend", "unreserve"]


def _interval(limit: Limit) -> tuple[timedelta, timedelta]:
    """The interval between starts and the burst tolerance of ``limit``'s rate."""
    rate = limit.rate_ms
    assert rate is not None
    interval = timedelta(milliseconds=rate[1] / rate[0])
    return interval, interval * (limit.burst - 1)


def spend(
    limiters: Collection[dict[str, Any]],
    lid: str,
    limit: Limit,
    value: Any,
    now: datetime,
    horizon: timedelta = timedelta(0),
) -> Optional[datetime]:
    """Take the next start of the rate on limiter ``lid``: its time (``now``, or later within ``horizon``), or None."""
    interval, tolerance = _interval(limit)
    for _ in range(5):
        found = limiters.find_one({"_id": lid}) or {}
        tat = found.get("tat")
        slot = now if tat is None else max(now, tat - tolerance)
        if slot - now > horizon:
            return None
        new = max(tat or slot, slot) + interval
        try:
            result = limiters.update_one(
                {"_id": lid, "tat": tat},
                {"$set": {"tat": new, "interval_ms": interval / timedelta(milliseconds=1)},
                 "$setOnInsert": {"limit": limit.name, "value": value, "holders": []}},
                upsert=not found,
            )  # fmt: skip
        except DuplicateKeyError:
            continue  # created meanwhile: read it again
        if result.matched_count or result.upserted_id is not None:
            return slot
    return None


def reserve(
    limiters: Collection[dict[str, Any]], lid: str, limit: Limit, now: datetime, count: int, horizon: timedelta
) -> list[datetime]:
    """Spend up to ``count`` next starts within ``horizon`` in one compare-and-set; their times, one interval apart.

    Fewer when the horizon ends first, none if it is spent. The last slot
    plus one interval is the new ``tat``, which :func:`unreserve` compares.
    """
    interval, tolerance = _interval(limit)
    for _ in range(5):
        found = limiters.find_one({"_id": lid}) or {}
        tat = found.get("tat")
        first = now if tat is None else max(now, tat - tolerance)
        slots = [first + interval * n for n in range(count) if first + interval * n - now <= horizon]
        if not slots or not found:
            return []
        new = max(tat or first, first) + interval * len(slots)
        if limiters.update_one({"_id": lid, "tat": tat}, {"$set": {"tat": new}}).matched_count:
            return slots
    return []


def unreserve(limiters: Collection[dict[str, Any]], lid: str, limit: Limit, slots: list[datetime]) -> bool:
    """Give back starts reserved for no job, if no start was spent after them (a compare-and-set of ``tat``).

    Two claimers that read the same jobs both reserve for them; the second
    finds them taken. Without this its starts go unused, and with three
    claimers a rate reached about two thirds of itself.
    """
    if not slots:
        return False
    interval, _ = _interval(limit)
    after = slots[-1] + interval
    back = {"$set": {"tat": after - interval * len(slots)}}
    return bool(limiters.update_one({"_id": lid, "tat": after}, back).matched_count)


def eligible_at(limit: Limit, doc: Mapping[str, Any]) -> Optional[datetime]:
    """When the rate of ``limit`` next allows a start on this limiter (``tat`` less the burst tolerance)."""
    if limit.rate is None or doc.get("tat") is None:
        return None
    _, tolerance = _interval(limit)
    result: datetime = doc["tat"] - tolerance
    return result
