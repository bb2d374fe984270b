"""A job's lifecycle states, and the sets of them the queue reasons about: the one place they are spelled."""

from __future__ import annotations

import enum

__all__ = [
    "ALL_STATUSES",
    "BLOCKED",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "FINISHED",
    "PENDING",
    "PROCESSING",
    "UNFINISHED",
    "JobStatus",
]


class JobStatus(str, enum.Enum):
    """Lifecycle states. A delayed or retrying job is ``PENDING`` with a future ``run_at``."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Waiting for its dependencies (``enqueue(depends_on=...)``): never claimed, released to pending by them.
    BLOCKED = "blocked"

    def __str__(self) -> str:
        return self.value


PENDING = JobStatus.PENDING.value
PROCESSING = JobStatus.PROCESSING.value
COMPLETED = JobStatus.COMPLETED.value
FAILED = JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value
BLOCKED = JobStatus.BLOCKED.value
#: Every status, as stored, in lifecycle order (``blocked``, which precedes ``pending``, came last).
ALL_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
#: Statuses a worker may still act on: never purged, never expired by retention.
UNFINISHED: tuple[str, ...] = (PENDING, PROCESSING, BLOCKED)
#: Statuses a job never leaves by itself (an operator's retry may).
FINISHED: tuple[str, ...] = (COMPLETED, FAILED, CANCELLED)
