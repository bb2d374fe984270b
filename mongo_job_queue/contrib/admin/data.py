"""The admin UI's own reads and writes of the jobs collection: listing, counting, delete, run now, throughput.

Each query names its index (``hint``) and carries ``maxTimeMS``; a query
that runs out of time is reported (:class:`TooSlow`), not retried, so a
filter too broad for a large collection costs one bounded try. Writes are
guarded by status so that a running job is never deleted or made due under
a live lease, and are safe to retry after a lost reply.

The indexes it needs beyond the model's are declared here
(:data:`ADMIN_INDEXES`) and created once per collection and process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, Union

from bson import ObjectId
from pymongo.errors import ExecutionTimeout

from ...status import CANCELLED, COMPLETED, FAILED, PENDING
from ...store.index_once import IndexOnce
from .filters import MAX_BULK, JobFilter

__all__ = ["ADMIN_INDEXES", "AdminJobs", "Page", "TooSlow"]

#: The server-side bound of every admin read.
READ_MAX_TIME_MS = 5_000
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


class TooSlow(Exception):
    """A read exceeded its ``maxTimeMS``: the filter is too broad for an index; narrow it."""


@dataclass(frozen=True)
class Page:
    jobs: list[dict[str, Any]]
    older: Optional[ObjectId]
    newer: Optional[ObjectId]


class AdminJobs:
    """Admin queries over a queue's jobs collection, given the queue's store."""

    def __init__(self, store: Any, model: Any, app_fields: Sequence[str] = ()) -> None:
        self.store = store
        self.model = model
        self.app_fields = list(app_fields)
        self._field_hints: dict[str, Hint] = {}

    def check_fields(self) -> None:
        """Each filter field is a field of the model and the first key of one of its declared indexes."""
        specs = self.model._meta.get("index_specs") or []
        for name in self.app_fields:
            if name not in self.model._fields:
                raise ValueError(f"filter field {name!r} is not a field of {self.model.__name__}")
            if not any(spec.get("fields") and spec["fields"][0][0] == name for spec in specs):
                raise ValueError(
                    f"filter field {name!r} is not the first key of an index of {self.model.__name__}: declare one"
                )

    def _create_indexes(self) -> None:
        """:data:`ADMIN_INDEXES`, and the key of each app filter field's index (hinted by its key)."""
        jobs = self.store.collection
        for name, keys in ADMIN_INDEXES.items():
            jobs.create_index(keys, name=name)
        indexes = jobs.index_information()
        for name in self.app_fields:
            found = [ix["key"] for ix in indexes.values() if ix["key"] and ix["key"][0][0] == name]
            if found:
                self._field_hints[name] = [(k, int(d)) for k, d in found[0]]

    def _hint(self, filt: JobFilter) -> Hint:
        if filt.unique_key is not None:
            return "mjq_unique"
        if filt.fields and filt.fields[0][0] in self._field_hints:
            return self._field_hints[filt.fields[0][0]]
        return "mjq_admin_list"

    def _read(self, fn: Any, op: str) -> Any:
        def call() -> Any:
            try:
                return _indexes.hinted(self.store.collection, self._create_indexes, fn)
            except ExecutionTimeout as exc:  # not retried: the same query would run out of time again
                raise TooSlow(f"{op} took longer than {READ_MAX_TIME_MS} ms: narrow the filter") from exc

        return self.store.retry(call, op)

    def page(
        self, filt: JobFilter, limit: int, *, before: Optional[ObjectId] = None, after: Optional[ObjectId] = None
    ) -> Page:
        """One page, newest first: older than ``before`` or newer than ``after`` (keyset pagination on ``_id``)."""
        query = filt.query()
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
            cursor = self.store.collection.find(
                query, projection, sort=[("_id", direction)], limit=limit + 1, max_time_ms=READ_MAX_TIME_MS
            ).hint(self._hint(filt))
            return list(cursor)

        docs = self._read(call, "admin_list")
        more = len(docs) > limit
        docs = docs[:limit]
        if after is not None:
            docs.reverse()
        older = docs[-1]["_id"] if docs and (more or after is not None) else None
        newer = docs[0]["_id"] if docs and (before is not None or (after is not None and more)) else None
        return Page(docs, older, newer)

    def count(self, filt: JobFilter, cap: int = MAX_BULK) -> int:
        """Jobs matching ``filt``, counted up to ``cap + 1`` (more than ``cap`` is refused by bulk actions)."""
        query = filt.query()
        return int(
            self._read(
                lambda: self.store.collection.count_documents(
                    query, hint=self._hint(filt), limit=cap + 1, maxTimeMS=READ_MAX_TIME_MS
                ),
                "admin_count",
            )
        )

    def matching_ids(self, filt: JobFilter, cap: int = MAX_BULK) -> list[ObjectId]:
        """The ids of the jobs matching ``filt`` now, newest first, at most ``cap``."""
        query = filt.query()

        def call() -> list[ObjectId]:
            cursor = self.store.collection.find(
                query, {"_id": 1}, sort=[("_id", -1)], limit=cap, max_time_ms=READ_MAX_TIME_MS
            ).hint(self._hint(filt))
            return [doc["_id"] for doc in cursor]

        return list(self._read(call, "admin_ids"))

    def delete(self, ids: Sequence[ObjectId]) -> int:
        """Delete these jobs unless running; how many are gone.

        One ``delete_many`` guarded by status. A retried try (its earlier
        reply lost) counts the listed jobs that no longer exist instead.
        """
        ids = list(ids)[:MAX_BULK]
        query = {"_id": {"$in": ids}, "status": {"$in": list(DELETABLE)}}
        tries = 0

        def call() -> int:
            nonlocal tries
            tries += 1
            deleted = self.store.collection.delete_many(query).deleted_count
            if tries == 1:
                return int(deleted)
            return len(ids) - int(self.store.collection.count_documents({"_id": {"$in": ids}}))

        return int(self.store.retry(call, "admin_delete"))

    def run_now(self, ids: Sequence[ObjectId]) -> int:
        """Make these pending jobs due now (a delayed or retrying job runs at the next claim); how many.

        Only ``pending`` jobs match, so a running job's lease is untouched.
        Each updated job records this call's mark, by which a retried try
        counts what the lost one did.
        """
        ids = list(ids)[:MAX_BULK]
        now = self.store.now()
        mark = f"{ObjectId()}:run_now"
        update = {"$set": {"run_at": now, "updated_at": now}, "$push": {"admin_marks": {"$each": [mark], "$slice": -8}}}
        query = {"_id": {"$in": ids}, "status": PENDING, "admin_marks": {"$ne": mark}}

        def call() -> int:
            self.store.collection.update_many(query, update)
            return int(self.store.collection.count_documents({"_id": {"$in": ids}, "admin_marks": mark}))

        return int(self.store.retry(call, "admin_run_now"))

    def throughput(self, minutes: int, now: Optional[datetime] = None) -> dict[str, Any]:
        """Completed and failed jobs per minute over the last ``minutes``, oldest first.

        A covered scan of ``mjq_admin_finished`` (finished_at, status), limited
        to :data:`THROUGHPUT_LIMIT` entries; ``capped`` says when it was reached.
        """
        now = now or self.store.now()
        start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
        query = {"finished_at": {"$gte": start}, "status": {"$in": [COMPLETED, FAILED]}}

        def call() -> list[dict[str, Any]]:
            cursor = self.store.collection.find(
                query,
                {"_id": 0, "finished_at": 1, "status": 1},
                limit=THROUGHPUT_LIMIT,
                max_time_ms=READ_MAX_TIME_MS,
            ).hint("mjq_admin_finished")
            return list(cursor)

        rows = self._read(call, "admin_throughput")
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
