"""How a retried write recognises its own earlier try, whose reply was lost: by a mark, or by a time as stored."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

__all__ = ["KEPT_MARKS", "as_stored", "new_mark", "pushed_mark"]

#: How many administrative marks a job keeps (``admin_marks``, see :class:`~mongo_job_queue.BaseJob`).
KEPT_MARKS = 8


def as_stored(value: datetime) -> datetime:
    """``value`` as the server stores and returns it: BSON dates hold whole milliseconds.

    A retried write that checks "did my earlier try apply?" by a time it wrote
    compares with this, not with the microseconds it computed.
    """
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def new_mark() -> str:
    """A marker unique to one administrative call, written by each of its tries.

    A retried call recognises its own earlier write by it: not by a time (a
    frozen clock gives two calls the same one) nor by a field a worker
    changes meanwhile (a claim rewrites ``run_at``, a cancel ends the job).
    """
    return uuid.uuid4().hex


def pushed_mark(mark: Any) -> dict[str, Any]:
    """An aggregation expression: ``admin_marks`` with ``mark`` appended, the last :data:`KEPT_MARKS` kept."""
    marks = {"$concatArrays": [{"$ifNull": ["$admin_marks", []]}, [mark]]}
    return {"$slice": [marks, -KEPT_MARKS]}
