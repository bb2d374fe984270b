"""Where the queue's time comes from.

All times are naive UTC datetimes, the form pymongo returns by default and
MongoEngine stores. The clock is injectable so tests can move time without
sleeping and so a later version can correct for a worker's skewed clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

__all__ = ["Clock", "after_ms", "to_naive_utc", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Current time as a naive UTC datetime truncated to BSON's millisecond precision."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def to_naive_utc(value: datetime) -> datetime:
    """Convert an aware datetime to naive UTC; a naive one is taken as UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def after_ms(start: datetime, ms: int) -> datetime:
    """``start`` plus ``ms`` milliseconds."""
    return start + timedelta(milliseconds=ms)
