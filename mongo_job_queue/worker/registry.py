"""The worker's presence in the registry: a heartbeat document others can list (admin UI, ``workers`` command).

A maintenance service (``run_once(now)``), run by the worker's maintenance
loop at the heartbeat's cadence: it writes when what it shows changed (the
jobs in flight), and otherwise every :func:`registry_interval_ms` (a minute
by default), so an idle worker costs one write a minute. The worker marks
its document stopped when it stops. A worker that crashed simply stops
beating, and readers judge it gone by its ``last_seen`` against the bound
it wrote itself, :func:`registry_stale_after_ms` of its own config (see
:meth:`~mongo_job_queue.store.workers.WorkerDocs.list`).
A failed write is logged by the loop and retried at the next beat: the
registry is information, never on the path of a claim or a lease.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from ..config import QueueConfig
from ..handlers import HandlerRegistry
from ..model import LeaseOwner
from ..store import JobStore
from .inflight import InflightTable

__all__ = ["WorkerPresence", "registry_interval_ms", "registry_stale_after_ms"]

log = logging.getLogger(__name__)

#: The longest an unchanged registry document goes unwritten.
_IDLE_WRITE_MS = 60_000


def registry_interval_ms(config: QueueConfig) -> int:
    """How often an unchanged registry document is written again: four heartbeats, at most a minute, at least one."""
    return max(config.heartbeat_interval_ms, min(_IDLE_WRITE_MS, 4 * config.heartbeat_interval_ms))


def registry_stale_after_ms(config: QueueConfig) -> int:
    """The bound a worker's document carries: three of its writes, and at least the lease.

    By then the leases of its jobs have expired too. It follows
    :func:`registry_interval_ms`, the longest a live worker leaves it unwritten.
    """
    return max(3 * registry_interval_ms(config), config.lease_ms)


@dataclass(eq=False)
class WorkerPresence:
    """Writes this worker's registry document: at start, every heartbeat interval, and at stop."""

    store: JobStore
    config: QueueConfig
    owner: LeaseOwner
    table: InflightTable
    registry: HandlerRegistry

    def __post_init__(self) -> None:
        self._started_at: Optional[datetime] = None
        self._written: Optional[dict[str, Any]] = None
        self._written_at = -math.inf

    @property
    def doc_id(self) -> str:
        """Unique per process: a ``worker_id`` set in the config may be shared by forked processes."""
        return f"{self.owner.worker_id}@{self.owner.host}:{self.owner.pid}"

    @property
    def interval_s(self) -> float:
        return self.config.heartbeat_interval_ms / 1000

    def run_once(self, now: Optional[datetime] = None) -> None:
        """Write the document if what it shows changed, or if it was last written an interval ago."""
        fields: dict[str, Any] = {
            "worker_id": self.owner.worker_id,
            "host": self.owner.host,
            "pid": self.owner.pid,
            "queues": list(self.config.queues),
            "job_types": list(self.registry.types()),
            "concurrency": self.config.concurrency,
            "in_flight": len(self.table),
            "stale_after_ms": registry_stale_after_ms(self.config),  # readers judge it by its writer's cadence
        }
        due = self._written_at + registry_interval_ms(self.config) / 1000
        if self._started_at is not None and fields == self._written and time.monotonic() < due:
            return
        if self._started_at is None:
            self._started_at = now or self.store.now()
        self.store.workers.beat(self.doc_id, fields, self._started_at)
        self._written, self._written_at = fields, time.monotonic()

    def stopped(self) -> None:
        """Mark the document stopped; never raises (a stop must not fail on the registry)."""
        self._started_at = None
        self._written, self._written_at = None, -math.inf
        try:
            self.store.workers.stopped(self.doc_id)
        except Exception:
            log.warning("worker %s: could not mark it stopped in the registry", self.owner.worker_id, exc_info=True)
