"""The GCRA of a rate limit, kept in its limiter document by server time: one start every interval.

``tat_ns`` (the theoretical arrival time, int64 nanoseconds since the epoch)
is the only state; every change is a compare-and-set on it, so concurrent
claimers never spend one start twice. Nanoseconds, not a BSON date: a date
keeps milliseconds, so a rate whose interval is not a whole number of
milliseconds ("2000/s", "600/s") would lose its fraction at every start and
give more starts than its rate. ``tat`` is the same time as a date, rounded
up to the millisecond, for the claim's read and for what shows.
A claim may also *reserve* the next starts for jobs it read, whose
``run_at`` then becomes their start (see :mod:`.limited_claims`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Optional

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..limits import Limit

__all__ = ["eligible_at", "held_start", "reserve", "spend"]


_MS_NS = 1_000_000
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=timezone.utc)


def _interval(limit: Limit) -> tuple[int, int]:
    """The interval between starts and the burst tolerance of ``limit``'s rate, in ns (rounded up: never faster)."""
    rate = limit.rate_ms
    assert rate is not None
    interval = -(-rate[1] * _MS_NS // rate[0])
    return interval, interval * (limit.burst - 1)


#: How late a job may be claimed after its reserved start and still use it (at least; one interval if longer).
HELD_LATENESS_NS = 1_000 * _MS_NS


def held_start(limit: Limit, doc: Mapping[str, Any], now: datetime) -> bool:
    """Whether the start ``doc``'s job holds for ``limit``'s rate may be used at ``now``: its slot is ``run_at``.

    Not before the slot (a run-now claim of a job whose start lies ahead,
    which would start it unpaid beside the rate's other starts), and not
    long after it (a job that waited for a free thread or a full cap would
    start beside the fresh starts of its time): then it pays like any job.
    """
    run_at = doc.get("run_at")
    if not isinstance(run_at, datetime):
        return False
    late = _ns(now) - _ns(run_at)
    return 0 <= late < max(HELD_LATENESS_NS, _interval(limit)[0])


def _ns(when: datetime) -> int:
    """``when`` in ns since the epoch (naive datetimes are UTC, as the driver reads them)."""
    return (when - (_EPOCH if when.tzinfo is None else _EPOCH_UTC)) // timedelta(microseconds=1) * 1_000


def _date(ns: int, like: datetime, unit_ns: int = 1_000) -> datetime:
    """``ns`` as a datetime as naive or aware as ``like``, rounded up to ``unit_ns``."""
    epoch = _EPOCH if like.tzinfo is None else _EPOCH_UTC
    return epoch + timedelta(microseconds=-(-ns // unit_ns) * (unit_ns // 1_000))


def _tat(doc: Mapping[str, Any]) -> Optional[int]:
    """The stored state in ns (a limiter written before ``tat_ns`` existed has only its date)."""
    if doc.get("tat_ns") is not None:
        return int(doc["tat_ns"])
    return None if doc.get("tat") is None else _ns(doc["tat"])


def _state(tat: int, now: datetime) -> dict[str, Any]:
    return {"tat_ns": tat, "tat": _date(tat, now, _MS_NS)}


class _Read(NamedTuple):
    """One read of a limiter's state: what a compare-and-set on it spends from."""

    found: dict[str, Any]  # the document, {} before its first start
    tat: Optional[int]
    first: int  # the earliest start the rate allows: now, or the tat less the burst tolerance
    interval: int

    def cas(self, lid: str) -> dict[str, Any]:
        """The filter that matches the limiter only while it still holds this state."""
        return {"_id": lid, "tat_ns": self.found.get("tat_ns"), "tat": self.found.get("tat")}

    def after(self, starts: int) -> int:
        """The tat once ``starts`` starts from ``first`` on are spent."""
        return max(self.tat or self.first, self.first) + self.interval * starts


def _reads(limiters: Collection[dict[str, Any]], lid: str, limit: Limit, now: datetime) -> Iterator[_Read]:
    """Up to five reads of limiter ``lid``: the caller reads again when a concurrent claimer's write won."""
    interval, tolerance = _interval(limit)
    now_ns = _ns(now)
    for _ in range(5):
        found = limiters.find_one({"_id": lid}) or {}
        tat = _tat(found)
        yield _Read(found, tat, now_ns if tat is None else max(now_ns, tat - tolerance), interval)


def spend(
    limiters: Collection[dict[str, Any]],
    lid: str,
    limit: Limit,
    value: Any,
    now: datetime,
    horizon: timedelta = timedelta(0),
) -> Optional[datetime]:
    """Take the next start of the rate on limiter ``lid``: its time (``now``, or later within ``horizon``), or None."""
    latest = _ns(now + horizon)
    for read in _reads(limiters, lid, limit, now):
        if read.first > latest:
            return None
        try:
            result = limiters.update_one(
                read.cas(lid),
                {"$set": {**_state(read.after(1), now), "interval_ms": read.interval / _MS_NS},
                 "$setOnInsert": {"limit": limit.name, "value": value, "holders": []}},
                upsert=not read.found,
            )  # fmt: skip
        except DuplicateKeyError:
            continue  # created meanwhile: read it again
        if result.matched_count or result.upserted_id is not None:
            return _date(read.first, now)
    return None


def reserve(
    limiters: Collection[dict[str, Any]], lid: str, limit: Limit, now: datetime, count: int, horizon: timedelta
) -> list[datetime]:
    """Spend up to ``count`` next starts within ``horizon`` in one compare-and-set; their times, one interval apart.

    Fewer when the horizon ends first, none if it is spent.
    """
    latest = _ns(now + horizon)
    for read in _reads(limiters, lid, limit, now):
        slots = [start for start in (read.first + read.interval * n for n in range(count)) if start <= latest]
        if not slots or not read.found:
            return []
        if limiters.update_one(read.cas(lid), {"$set": _state(read.after(len(slots)), now)}).matched_count:
            return [_date(slot, now) for slot in slots]
    return []


def eligible_at(limit: Limit, doc: Mapping[str, Any]) -> Optional[datetime]:
    """When the rate of ``limit`` next allows a start on this limiter (``tat`` less the burst tolerance)."""
    tat = _tat(doc)
    if limit.rate is None or tat is None:
        return None
    _, tolerance = _interval(limit)
    return _date(tat - tolerance, doc["tat"] if doc.get("tat") is not None else _EPOCH)
