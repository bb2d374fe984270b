"""The worker's presence in the registry: a heartbeat document others can list (admin UI, ``workers`` command).

A maintenance service (``run_once(now)``), run by the worker's maintenance
loop at the heartbeat's cadence; the worker marks its document stopped
when it stops. A worker that crashed simply stops beating, and readers
judge it gone by its ``last_seen`` against the bound it wrote itself,
from its own heartbeat and lease (see :meth:`~mongo_job_queue.store.workers.WorkerDocs.list`).
A failed write is logged by the loop and retried at the next beat: the
registry is information, never on the path of a claim or a lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from ..config import QueueConfig
from ..handlers import HandlerRegistry
from ..model import LeaseOwner
from ..store import JobStore
from ..store.workers import stale_after_ms
from .inflight import InflightTable

__all__ = ["WorkerPresence"]

log = logging.getLogger(__name__)


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

    @property
    def doc_id(self) -> str:
        """Unique per process: a ``worker_id`` set in the config may be shared by forked processes."""
        return f"{self.owner.worker_id}@{self.owner.host}:{self.owner.pid}"

    @property
    def interval_s(self) -> float:
        return self.config.heartbeat_interval_ms / 1000

    def run_once(self, now: Optional[datetime] = None) -> None:
        """Write the document now: who this worker is, what it claims, how many jobs it runs."""
        if self._started_at is None:
            self._started_at = now or self.store.now()
        fields: dict[str, Any] = {
            "worker_id": self.owner.worker_id,
            "host": self.owner.host,
            "pid": self.owner.pid,
            "queues": list(self.config.queues),
            "job_types": list(self.registry.types()),
            "concurrency": self.config.concurrency,
            "in_flight": len(self.table),
            "stale_after_ms": stale_after_ms(self.config),  # readers judge this document by its writer's cadence
        }
        self.store.workers.beat(self.doc_id, fields, self._started_at)

    def stopped(self) -> None:
        """Mark the document stopped; never raises (a stop must not fail on the registry)."""
        self._started_at = None
        try:
            self.store.workers.stopped(self.doc_id)
        except Exception:
            log.warning("worker %s: could not mark it stopped in the registry", self.owner.worker_id, exc_info=True)
