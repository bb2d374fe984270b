"""The admin UI's own reads and writes of the jobs collection: listing, counting, delete, run now, throughput.

Each read names its index (``hint``) and is tried once through
:class:`~.reads.AdminReads`, under the queue's ``db_timeout_ms`` (sent as
``maxTimeMS``): a query that runs out of time is reported (:class:`TooSlow`),
not retried, so a filter too broad for a large collection costs one
bounded try. Writes go through the queue's store and its retries; they are
guarded by status so that a running job is never deleted or made due under
a live lease, are safe to retry after a lost reply, and count only what
they did. One that fails part-way says how far it got (:class:`ActionFailed`).

The indexes it needs beyond the model's are declared here
(:data:`ADMIN_INDEXES`) and created once per collection and process, under
the index build's time bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, TypeVar, Union

from bson import ObjectId

from ...model import LIBRARY_FIELDS
from ...status import CANCELLED, COMPLETED, FAILED, PENDING
from ...store import JobStore
from ...store.index_once import IndexOnce
from ...store.listing import JobQueryError, Listing
from .filters import MAX_BULK, FilterError, JobFilter
from .reads import NARROW, AdminReads, TooSlow

__all__ = ["ADMIN_INDEXES", "ActionFailed", "AdminJobs", "Page", "TooSlow"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The most finished jobs the throughput chart counts (a covered index scan).
THROUGHPUT_LIMIT = 100_000
#: The job list sorts newest first within a status; the chart reads finished_at, covered.
ADMIN_INDEXES: dict[str, list[tuple[str, int]]] = {
    "mjq_admin_list": [("status", 1), ("_id", -1)],
    "mjq_admin_finished": [("finished_at", 1), ("status", 1)],
}
#: The fields the list shows; payloads, results and error histories stay on the server.
LIST_FIELDS = [
    "type", "queue", "status", "priority", "attempts", "max_retries", "run_at", "created_at", "finished_at",
    "last_error.type", "last_error.message", "progress", "unique_key", "lease_owner", "cancel_requested", "schedule",
]  # fmt: skip
DELETABLE = (PENDING, COMPLETED, FAILED, CANCELLED)

Hint = Union[str, list[tuple[str, int]]]

_indexes = IndexOnce()


class ActionFailed(Exception):
    """An action stopped by an error part-way: how many jobs it had changed (None: could not be told)."""

    def __init__(self, count: Optional[int], cause: BaseException) -> None:
        super().__init__(f"failed after {'an unknown number of' if count is None else count} job(s): {cause!r:.300}")
        self.count = count
        self.cause = cause


@dataclass(frozen=True)
class Page:
    jobs: list[dict[str, Any]]
    older: Optional[ObjectId]
    newer: Optional[ObjectId]


class AdminJobs:
    """Admin queries over a queue's jobs collection: writes through the queue's store, reads through ``reads``."""

    def __init__(self, store: JobStore, reads: AdminReads, app_fields: Sequence[str] = ()) -> None:
        self.store = store
        self.reads = reads
        self.model = store.model
        self.app_fields = list(app_fields)
        self._listing = Listing(store)

    def check_fields(self) -> None:
        """Each filter field is a field the model declares itself and the first key of one of its declared indexes."""
        for name in self.app_fields:
            if name not in self.model._fields:
                raise ValueError(f"filter field {name!r} is not a field of {self.model.__name__}")
            if name in LIBRARY_FIELDS or name == "id":
                raise ValueError(
                    f"filter field {name!r} is a field of the queue, not one {self.model.__name__} declares itself"
                )
            if self._declared_index(name) is None:
                raise ValueError(
                    f"filter field {name!r} is not the first key of an index of {self.model.__name__}: declare one"
                )

    def _declared_index(self, name: str) -> Optional[list[tuple[str, int]]]:
        """The key of the model's first declared index that starts with ``name`` (hinted by that key)."""
        for spec in self.model._meta.get("index_specs") or []:
            fields = spec.get("fields") or []
            if fields and fields[0][0] == name:
                return [(str(key), direction) for key, direction in fields]
        return None

    def _create_indexes(self) -> None:
        """:data:`ADMIN_INDEXES` (the model's own indexes, the app's included, are the store's)."""
        jobs = self.reads.store.collection
        for name, keys in ADMIN_INDEXES.items():
            jobs.create_index(keys, name=name)

    def field_value(self, name: str, text: str) -> tuple[str, Any]:
        """A filter value of the app's field ``name`` as the field stores it: the conversion of the CLI's ``--field``.

        Raises:
            FilterError: ``text`` is no value of the field (``"abc"`` for an ``IntField``).
        """
        try:
            return self._listing.app_field(name, text)
        except JobQueryError as exc:
            raise FilterError(str(exc)) from exc

    def _hint(self, filt: JobFilter) -> Hint:
        if filt.unique_key is not None:
            return "mjq_unique"
        if filt.fields:
            return self._declared_index(filt.fields[0][0]) or "mjq_admin_list"
        return "mjq_admin_list"

    def _read(self, fn: Callable[[], T], op: str, what: str = "The job list", advice: str = NARROW) -> T:
        """One bounded try of ``fn`` on the UI's indexes; a timeout says to narrow the filter."""
        return self.reads.indexed(_indexes, "", self._create_indexes, fn, op, what, advice)

    def page(
        self, filt: JobFilter, limit: int, *, before: Optional[ObjectId] = None, after: Optional[ObjectId] = None
    ) -> Page:
        """One page, newest first: older than ``before`` or newer than ``after`` (keyset pagination on ``_id``)."""
        query = filt.query(self.field_value)
        ids = dict(query.get("_id", {}))
        if after is not None:
            ids["$gt"] = after
        elif before is not None:
            ids["$lt"] = min(ids.get("$lt", before), before)
        if ids:
            query["_id"] = ids
        direction = 1 if after is not None else -1
        projection = dict.fromkeys(LIST_FIELDS, 1)

        def call() -> list[dict[str, Any]]:
            jobs = self.reads.store.collection
            cursor = jobs.find(query, projection, sort=[("_id", direction)], limit=limit + 1).hint(self._hint(filt))
            return list(cursor)

        docs = self._read(call, "admin_list")
        more = len(docs) > limit
        docs = docs[:limit]
        if after is not None:
            docs.reverse()
        older = docs[-1]["_id"] if docs and (more or after is not None) else None
        newer = docs[0]["_id"] if docs and (before is not None or (after is not None and more)) else None
        return Page(docs, older, newer)

    def matching_ids(self, filt: JobFilter, cap: int = MAX_BULK) -> list[ObjectId]:
        """The ids of the jobs matching ``filt`` now, newest first, at most ``cap``."""
        query = filt.query(self.field_value)

        def call() -> list[ObjectId]:
            jobs = self.reads.store.collection
            cursor = jobs.find(query, {"_id": 1}, sort=[("_id", -1)], limit=cap).hint(self._hint(filt))
            return [doc["_id"] for doc in cursor]

        return list(self._read(call, "admin_ids", "Finding the matching jobs"))

    def delete(self, ids: Sequence[ObjectId]) -> int:
        """Delete these jobs unless running; how many this call deleted.

        The listed jobs that exist and may be deleted are read first; one
        ``delete_many`` guarded by status removes those. A retried try (its
        earlier reply lost) counts those of them now gone, so ids of jobs
        that never existed, or were deleted before, are never counted.

        Raises:
            ActionFailed: with how many of them are gone (None if that could not be read).
        """
        deletable = {"_id": {"$in": list(ids)[:MAX_BULK]}, "status": {"$in": list(DELETABLE)}}
        found = self.store.retry(lambda: list(self.store.collection.find(deletable, {"_id": 1})), "admin_delete_find")
        present = [doc["_id"] for doc in found]
        if not present:
            return 0
        query = {**deletable, "_id": {"$in": present}}
        tries = 0

        def gone() -> int:
            return len(present) - int(self.store.collection.count_documents({"_id": {"$in": present}}))

        def call() -> int:
            nonlocal tries
            tries += 1
            deleted = self.store.collection.delete_many(query).deleted_count
            return int(deleted) if tries == 1 else gone()

        return self._counted(call, gone, "admin_delete")

    def run_now(self, ids: Sequence[ObjectId]) -> int:
        """Make these pending jobs due now (a delayed or retrying job runs at the next claim); how many.

        Only ``pending`` jobs match, so a running job's lease is untouched.
        Each updated job records this call's mark, by which a retried try
        counts what the lost one did.

        Raises:
            ActionFailed: with how many carry the mark (None if that could not be read).
        """
        ids = list(ids)[:MAX_BULK]
        now = self.store.now()
        mark = f"{ObjectId()}:run_now"
        # A start a rate reserved for the job is at its old run_at: moved now, the job pays its rates again.
        update = {
            "$set": {"run_at": now, "updated_at": now},
            "$unset": {"rate_slots": ""},
            "$push": {"admin_marks": {"$each": [mark], "$slice": -8}},
        }
        query = {"_id": {"$in": ids}, "status": PENDING, "admin_marks": {"$ne": mark}}

        def marked() -> int:
            return int(self.store.collection.count_documents({"_id": {"$in": ids}, "admin_marks": mark}))

        def call() -> int:
            self.store.collection.update_many(query, update)
            return marked()

        return self._counted(call, marked, "admin_run_now")

    def _counted(self, call: Callable[[], int], done: Callable[[], int], op: str) -> int:
        """``call`` through the store's retries; if it fails for good, :class:`ActionFailed` with ``done()``."""
        try:
            return int(self.store.retry(call, op))
        except Exception as exc:
            try:
                count: Optional[int] = self.reads.run(done, f"{op}_count", "Counting what the action did")
            except Exception:  # the action's own error is the one to report
                log.warning("admin %s failed, and what it did could not be counted", op, exc_info=True)
                count = None
            raise ActionFailed(count, exc) from exc

    def throughput(self, minutes: int, now: Optional[datetime] = None) -> dict[str, Any]:
        """Completed and failed jobs per minute over the last ``minutes``, oldest first.

        A covered scan of ``mjq_admin_finished`` (finished_at, status), limited
        to :data:`THROUGHPUT_LIMIT` entries; ``capped`` says when it was reached.
        """
        now = now or self.store.now()
        start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
        query = {"finished_at": {"$gte": start}, "status": {"$in": [COMPLETED, FAILED]}}

        def call() -> list[dict[str, Any]]:
            jobs = self.reads.store.collection
            covered = {"_id": 0, "finished_at": 1, "status": 1}
            return list(jobs.find(query, covered, limit=THROUGHPUT_LIMIT).hint("mjq_admin_finished"))

        rows = self._read(call, "admin_throughput", "Counting the finished jobs", "shorten the chart's window")
        slots = [start + timedelta(minutes=i) for i in range(minutes)]
        completed, failed = [0] * minutes, [0] * minutes
        for row in rows:
            at = row.get("finished_at")
            if not isinstance(at, datetime):
                continue
            slot = int((at - start).total_seconds() // 60)
            if 0 <= slot < minutes:
                (completed if row.get("status") == COMPLETED else failed)[slot] += 1
        return {
            "t": [int((s - datetime(1970, 1, 1)).total_seconds()) for s in slots],
            "completed": completed,
            "failed": failed,
            "capped": len(rows) >= THROUGHPUT_LIMIT,
        }
