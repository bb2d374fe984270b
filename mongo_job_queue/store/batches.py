"""``store.batches``: the batch documents, and a batch's counts read from its jobs.

A batch is one document in ``<jobs collection>_batches``; its jobs carry
its ``_id`` in ``batch_id``. The document holds what no job can tell: the
state (``open`` → ``sealed`` → ``finished``), the callbacks with their
job ids allocated at creation, and which callbacks were fired. The
counts are never stored: :meth:`BatchDocs.counts` reads them from the
jobs (one covered scan of the ``mjq_batch`` index), so they cannot drift
from the jobs whatever crashed where.

Every write here is idempotent under retry: a conditional ``$set`` of the
state, ``$min`` of a firing time, ``$addToSet`` of a fired event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Optional

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..status import FINISHED
from .handle import MAINTENANCE_MAX_TIME_MS, JobStore
from .siblings import SiblingCollection

__all__ = ["FINISHED_STATE", "OPEN", "SEALED", "BatchDocs"]

#: A batch's states, in order; a batch never goes back to ``open``.
OPEN = "open"
SEALED = "sealed"
FINISHED_STATE = "finished"


class BatchDocs:
    """Create, seal, finish and reopen batch documents; count a batch's jobs by status."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._batches = SiblingCollection(store, "batches", _create_sweep_index)

    def create(self, doc: dict[str, Any]) -> None:
        """Insert a new batch document (its ``_id`` preset); a retry after a lost reply finds it stored.

        The sweep index is created before this process's first batch, so the
        collection exists with it before any batch is in it. Only creating a
        batch builds it: a worker's sweep on a database with no batch creates
        nothing (an index build on a new collection stalls other queries on
        some servers).
        """
        self._batches.ready()
        tries = 0

        def call() -> None:
            nonlocal tries
            tries += 1
            try:
                self._batches.collection.insert_one(doc)
            except DuplicateKeyError:
                if tries == 1:
                    raise

        self._store.retry(call, "create_batch")

    def get(self, batch_id: ObjectId) -> Optional[dict[str, Any]]:
        """The batch document, or None."""
        return self._store.retry(lambda: self._batches.collection.find_one({"_id": batch_id}), "get_batch")

    def seal(self, batch_id: ObjectId) -> Optional[dict[str, Any]]:
        """Seal an open batch (a no-op on one sealed already); the document after, None if there is none."""
        now = self._store.now()

        def call() -> Optional[dict[str, Any]]:
            doc = self._batches.collection.find_one_and_update(
                {"_id": batch_id, "state": OPEN},
                {"$set": {"state": SEALED, "sealed_at": now, "updated_at": now}},
                return_document=ReturnDocument.AFTER,
            )
            return doc if doc is not None else self._batches.collection.find_one({"_id": batch_id})

        return self._store.retry(call, "seal_batch")

    def counts(self, batch_id: ObjectId) -> dict[str, int]:
        """The batch's stored jobs by status, in one aggregation over ``mjq_batch`` (a job is counted once)."""
        pipeline: list[Mapping[str, Any]] = [
            {"$match": {"batch_id": batch_id}},
            {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ]

        def call() -> dict[str, int]:
            return {str(row["_id"]): int(row["n"]) for row in self._store.collection.aggregate(pipeline)}

        return self._store.retry(call, "batch_counts")

    def job_ids(self, batch_id: ObjectId, statuses: Sequence[str]) -> list[ObjectId]:
        """The ids of the batch's jobs in ``statuses`` (for a batch's retry)."""
        filt = {"batch_id": batch_id, "status": {"$in": list(statuses)}}
        return self._store.retry(
            lambda: [d["_id"] for d in self._store.collection.find(filt, {"_id": 1})], "batch_job_ids"
        )

    def release_staged(self, job_ids: Sequence[ObjectId]) -> None:
        """Make a batch add's staged jobs claimable: their own ``run_at`` back, in one update."""
        filt = {"_id": {"$in": list(job_ids)}, "batch_staged_run_at": {"$exists": True}}
        update: list[dict[str, Any]] = [
            {"$set": {"run_at": "$batch_staged_run_at"}},
            {"$project": {"batch_staged_run_at": 0}},
        ]
        self._store.retry(lambda: self._store.collection.update_many(filt, update), "release_staged")

    def remove_abandoned_staged(self, batch_id: ObjectId, before: datetime) -> int:
        """Delete the batch's jobs staged before ``before`` and never released: their add died between its steps.

        Staged jobs are unclaimable, so none can have run, and their caller
        never heard the add succeed; left alone they would keep a sealed
        batch from finishing for ever.
        """
        filt = {"batch_id": batch_id, "batch_staged_run_at": {"$exists": True}, "created_at": {"$lt": before}}
        return self._store.retry(lambda: self._store.collection.delete_many(filt).deleted_count, "remove_staged")

    def remove_staged(self, job_ids: Sequence[ObjectId]) -> int:
        """Delete a batch add's staged jobs (the batch was sealed meanwhile): none can have run."""
        filt = {"_id": {"$in": list(job_ids)}, "batch_staged_run_at": {"$exists": True}}
        return self._store.retry(lambda: self._store.collection.delete_many(filt).deleted_count, "remove_staged")

    def begin_firing(self, batch_id: ObjectId, event: str) -> tuple[bool, Optional[datetime]]:
        """Record that ``event``'s callback is being inserted; ``(go, first)``.

        ``go`` is False once the event was fired (its callback recorded as
        inserted): nothing more to do. ``first`` is when the first process
        began firing it (None for this one): the callback may be stored
        already, and the caller inserts it again only by its preset ``_id``.
        """
        now = self._store.now()
        path = f"firing.{event}"

        def call() -> tuple[bool, Optional[datetime]]:
            before = self._batches.collection.find_one_and_update(
                {"_id": batch_id, "fired": {"$ne": event}},
                {"$min": {path: now}, "$set": {"updated_at": now}},
                projection={"firing": 1},
                return_document=ReturnDocument.BEFORE,
            )
            if before is None:
                return False, None
            first = (before.get("firing") or {}).get(event)
            return True, first if isinstance(first, datetime) else None

        return self._store.retry(call, "begin_batch_firing")

    def mark_fired(self, batch_id: ObjectId, event: str) -> None:
        """Record that ``event``'s callback job is stored: it is never inserted again."""
        now = self._store.now()
        self._store.retry(
            lambda: self._batches.collection.update_one(
                {"_id": batch_id}, {"$addToSet": {"fired": event}, "$set": {"updated_at": now}}
            ),
            "mark_batch_fired",
        )

    def saw_failure(self, batch_id: ObjectId) -> None:
        """Record that a job of the batch failed for good: no ``on_success`` until a retry clears it."""
        self._store.retry(
            lambda: self._batches.collection.update_one({"_id": batch_id}, {"$set": {"saw_failure": True}}),
            "batch_failed",
        )

    def finish(self, batch_id: ObjectId, gen: Optional[int]) -> bool:
        """Mark a sealed batch finished; False if it was not sealed, or retried since ``gen`` was read.

        ``gen`` is the batch's ``gen`` read before its jobs were counted: a
        retry requeues its jobs before it increments ``gen``, so counts
        taken before a retry cannot finish the batch after it.
        """
        now = self._store.now()
        return self._store.retry(
            lambda: (
                self._batches.collection.update_one(
                    {"_id": batch_id, "state": SEALED, "gen": gen},
                    {"$set": {"state": FINISHED_STATE, "finished_at": now, "updated_at": now}},
                ).modified_count
                == 1
            ),
            "finish_batch",
        )

    def reopen(self, batch_id: ObjectId) -> bool:
        """After a retry queued a sealed or finished batch's jobs: a new ``gen``, and finished goes back to sealed.

        Fired callbacks stay fired. A retried call increments ``gen`` twice:
        harmless, any check that read the old one counts again.
        """
        now = self._store.now()
        return self._store.retry(
            lambda: (
                self._batches.collection.update_one(
                    {"_id": batch_id, "state": {"$in": [SEALED, FINISHED_STATE]}},
                    {
                        "$inc": {"gen": 1},
                        "$set": {"state": SEALED, "updated_at": now},
                        "$unset": {"finished_at": "", "saw_failure": ""},
                    },
                ).modified_count
                == 1
            ),
            "reopen_batch",
        )

    def touch(self, batch_id: ObjectId, now: datetime) -> None:
        """Move a batch to the back of the reconciler's line."""
        self._store.retry(
            lambda: self._batches.collection.update_one(
                {"_id": batch_id, "state": {"$ne": FINISHED_STATE}}, {"$max": {"updated_at": now}}
            ),
            "touch_batch",
        )

    def stale(self, state: str, before: datetime, limit: int) -> list[ObjectId]:
        """Up to ``limit`` batches in ``state`` untouched since ``before``, least recently touched first."""
        filt = {"state": state, "updated_at": {"$lte": before}}

        def call() -> list[ObjectId]:
            found = self._batches.collection.find(filt, {"_id": 1}, sort=[("updated_at", 1)], limit=limit)
            return [d["_id"] for d in found.max_time_ms(MAINTENANCE_MAX_TIME_MS)]

        return self._store.retry(call, "stale_batches")


def unfinished(counts: Mapping[str, int]) -> int:
    """How many of the counted jobs are not final (pending, running, or any other state that is not)."""
    return sum(n for status, n in counts.items() if status not in FINISHED)


def _create_sweep_index(batches: Collection[dict[str, Any]]) -> None:
    batches.create_index([("state", ASCENDING), ("updated_at", ASCENDING)], name="mjq_batch_sweep")
