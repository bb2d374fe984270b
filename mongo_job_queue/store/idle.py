"""The two reads an idle worker sleeps by: when the next delayed job comes due, when the next lease expires.

Each is one indexed read of one field of one document, so an idle worker
can sleep until the moment something can happen instead of polling for it:
the poller until the earliest ``run_at`` of a pending job it may claim, the
rescuer until the earliest ``lease_expires_at`` of a running job.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Optional

from ..clock import to_naive_utc
from ..status import PENDING, PROCESSING
from .handle import JobStore

__all__ = ["earliest_lease_expiry", "next_due"]

#: A read an idle worker may wait on, not a claim: the server gives up on it after this long.
_IDLE_READ_MAX_TIME_MS = 5_000


def _first_time(store: JobStore, query: dict[str, Any], field: str, what: str, index: str) -> Optional[datetime]:
    def call() -> Optional[datetime]:
        cursor = store.collection.find(
            query, {field: 1, "_id": 0}, sort=[(field, 1)], limit=1, max_time_ms=_IDLE_READ_MAX_TIME_MS
        )
        doc = next(iter(cursor.hint(index)), None)
        value = (doc or {}).get(field)
        return to_naive_utc(value) if isinstance(value, datetime) else None

    return store.retry(call, what)


def next_due(store: JobStore, types: Sequence[str], queues: Sequence[str], after: datetime) -> Optional[datetime]:
    """The earliest ``run_at`` after ``after`` of a pending job of these types and queues; None if there is none.

    Served by the due index (queue, type, run_at over pending jobs): the
    server merges the runs of each queue and type in ``run_at`` order and
    reads one entry of each, however many jobs are delayed. The claim index
    would bound the read too, but with ``priority`` before ``run_at`` it
    sorts every delayed job of these queues and types in memory.
    """
    if not types or not queues:
        return None
    query = {"status": PENDING, "queue": {"$in": list(queues)}, "type": {"$in": list(types)}, "run_at": {"$gt": after}}
    return _first_time(store, query, "run_at", "next_due", "mjq_due")


def earliest_lease_expiry(store: JobStore) -> Optional[datetime]:
    """The earliest ``lease_expires_at`` of a running job, expired or not; None if no job runs.

    Served by the lease index (status, lease_expires_at): one index entry read.
    """
    query = {"status": PROCESSING, "lease_expires_at": {"$type": "date"}}
    return _first_time(store, query, "lease_expires_at", "earliest_lease_expiry", "mjq_lease")
