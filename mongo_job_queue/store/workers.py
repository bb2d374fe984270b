"""The worker registry's documents: one small heartbeat document per running worker, in ``<jobs>_workers``.

A collection of its own rather than the control collection: its documents
come and go with processes (a TTL index removes the ones long gone), are
written every heartbeat by every worker, and are listed by ``last_seen``;
the control collection holds a few documents read on the claim path
(pause, schedules), which this churn should not share.

Each document carries its worker's own staleness bound (``stale_after_ms``,
from the worker's heartbeat and lease), and is judged by it: a reader
configured otherwise (the admin UI of another process, the CLI) must not
call a slowly beating worker gone.

The data access only: :class:`~mongo_job_queue.worker.registry.WorkerPresence`
decides what to write and when, the admin UI and the CLI read :meth:`WorkerDocs.list`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

import pymongo
from pymongo.collection import Collection

from ..config import QueueConfig
from .handle import JobStore
from .siblings import SiblingCollection

__all__ = ["REGISTRY_TTL_S", "WorkerDocs", "WorkerInfo", "stale_after_ms"]

#: A worker's document is removed this long after it was last seen (stopped or gone).
REGISTRY_TTL_S = 7 * 24 * 3600
#: The most workers one listing returns.
_LIST_LIMIT = 500
#: The TTL index on ``last_seen``, which also serves the listing's sort.
SEEN_INDEX = "mjq_workers_seen"


def stale_after_ms(config: QueueConfig) -> int:
    """How long a worker of this config may go unseen before it is judged gone.

    Three heartbeat intervals, and at least the lease: by then the leases
    of its jobs have expired too.
    """
    return max(3 * config.heartbeat_interval_ms, config.lease_ms)


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the registry lists it; ``state`` is ``live``, ``stopped`` or ``gone`` (stopped beating)."""

    id: str
    host: str
    pid: int
    worker_id: str
    queues: list[str]
    job_types: list[str]
    concurrency: int
    started_at: Optional[datetime]
    last_seen: Optional[datetime]
    stopped_at: Optional[datetime]
    in_flight: int
    state: str


class WorkerDocs:
    """Reads and writes of ``<jobs collection>_workers``."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._workers = SiblingCollection(store, "workers", _create_index)

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        """``<jobs collection>_workers`` (tests and tools write registry documents directly)."""
        return self._workers.collection

    def beat(self, doc_id: str, fields: Mapping[str, Any], started_at: datetime) -> None:
        """Upsert this worker's document: its description, ``last_seen`` now, not stopped.

        ``fields`` should carry ``stale_after_ms`` (see :func:`stale_after_ms`
        of the worker's config), by which readers judge this document. An
        upsert by ``_id`` that sets absolute values: a retried try after a
        lost reply writes the same document again.
        """
        now = self.store.now()
        update = {
            "$set": {**fields, "last_seen": now},
            "$setOnInsert": {"started_at": started_at},
            "$unset": {"stopped_at": ""},
        }

        workers = self._workers.ready()
        self.store.retry(lambda: workers.update_one({"_id": doc_id}, update, upsert=True), "worker_beat")

    def stopped(self, doc_id: str) -> None:
        """Mark this worker stopped (a clean stop); a crashed one is told apart by its old ``last_seen``."""
        now = self.store.now()
        update = {"$set": {"stopped_at": now, "last_seen": now, "in_flight": 0}}
        self.store.retry(lambda: self._workers.collection.update_one({"_id": doc_id}, update), "worker_stopped")

    def list(self, *, stale_after: Optional[timedelta] = None, limit: int = _LIST_LIMIT) -> list[WorkerInfo]:
        """The registered workers, most recently seen first, each judged live, stopped or gone.

        A worker is gone when it was not seen for its own ``stale_after_ms``
        (written by the worker; a document without one, from an older
        version, by this store's config), or for ``stale_after`` when given:
        every document is then judged by that bound instead.
        """
        fallback = timedelta(milliseconds=stale_after_ms(self.store.config))
        limit = max(1, min(int(limit), _LIST_LIMIT))

        def query() -> list[dict[str, Any]]:
            workers = self._workers.collection
            return list(workers.find({}, sort=[("last_seen", pymongo.DESCENDING)], limit=limit).hint(SEEN_INDEX))

        docs = self._workers.hinted(lambda: self.store.retry(query, "workers_list"))
        now = self.store.now()
        return [_info(doc, now, stale_after or _own_bound(doc, fallback)) for doc in docs]


def _create_index(workers: Collection[dict[str, Any]]) -> None:
    workers.create_index([("last_seen", -1)], name=SEEN_INDEX, expireAfterSeconds=REGISTRY_TTL_S)


def _own_bound(doc: Mapping[str, Any], fallback: timedelta) -> timedelta:
    """The staleness bound the worker wrote into its document, or ``fallback``."""
    own = doc.get("stale_after_ms")
    if isinstance(own, int) and not isinstance(own, bool) and own > 0:
        return timedelta(milliseconds=min(own, REGISTRY_TTL_S * 1000))  # gone from the collection by then anyway
    return fallback


def _info(doc: Mapping[str, Any], now: datetime, bound: timedelta) -> WorkerInfo:
    seen = doc.get("last_seen")
    if doc.get("stopped_at") is not None:
        state = "stopped"
    elif isinstance(seen, datetime) and now - seen <= bound:
        state = "live"
    else:
        state = "gone"
    return WorkerInfo(
        id=str(doc["_id"]),
        host=str(doc.get("host", "")),
        pid=int(doc.get("pid") or 0),
        worker_id=str(doc.get("worker_id", "")),
        queues=[str(q) for q in doc.get("queues") or []],
        job_types=[str(t) for t in doc.get("job_types") or []],
        concurrency=int(doc.get("concurrency") or 0),
        started_at=doc.get("started_at"),
        last_seen=seen if isinstance(seen, datetime) else None,
        stopped_at=doc.get("stopped_at"),
        in_flight=int(doc.get("in_flight") or 0),
        state=state,
    )
