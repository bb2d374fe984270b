"""Where the queue's time comes from.

All times are naive UTC datetimes, the form pymongo returns by default and
MongoEngine stores. The clock is injectable so tests can move time without
sleeping. A skewed host clock is corrected by the store, not here: with
``sync_clock`` it measures this clock's offset from the server's and adds it
to every reading (``JobStore.now``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

__all__ = ["MAX_DURATION_MS", "Clock", "after_ms", "to_naive_utc", "utcnow"]

Clock = Callable[[], datetime]

#: Longest duration the queue adds to a time or waits for: 100 years. Every
#: delay and setting is bounded by it, well inside ``datetime.max`` and
#: ``threading.TIMEOUT_MAX``, so no arithmetic on times can overflow.
MAX_DURATION_MS = 100 * 365 * 24 * 3600 * 1000
_LATEST = datetime.max.replace(microsecond=999_000)


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
    """``start`` plus ``ms`` milliseconds, the duration clamped to :data:`MAX_DURATION_MS` either way.

    Inputs are validated where they enter (enqueue, config); the clamp is
    the last line of defence for computed ones, so that a job being written
    back never fails on an ``OverflowError`` and stays in limbo.
    """
    ms = max(-MAX_DURATION_MS, min(MAX_DURATION_MS, ms))
    try:
        return start + timedelta(milliseconds=ms)
    except OverflowError:
        return _LATEST if ms > 0 else datetime.min
