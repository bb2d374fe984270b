"""``store.jobs``: everything about one job's lifecycle, behind one object.

:class:`Jobs` holds the insert path itself and exposes the claim
(:mod:`.claims`), the lease heartbeat (:mod:`.leases`) and the outcome
writes (:mod:`.outcomes`) as its own methods, so a caller writes
``store.jobs.insert``, ``store.jobs.claim``, ``store.jobs.complete``
without knowing which module holds each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..errors import InvalidJobError
from ..status import FINISHED, PENDING
from .claims import Claims
from .faults import duplicate_field, is_transient
from .handle import JobStore
from .indexes import Indexes
from .leases import Leases
from .outcomes import Outcomes

__all__ = ["Jobs"]

_MAX_RELEASES = 10


class Jobs:
    """Insert, claim, keep the lease of, and end the jobs of one store (see the module docstring)."""

    def __init__(self, store: JobStore, indexes: Indexes) -> None:
        self._store = store
        self._indexes = indexes
        outcomes = Outcomes(store)
        claims = Claims(store, outcomes)
        leases = Leases(store)
        # The claim path (claims.py).
        self.claim = claims.claim
        self.claim_batch = claims.claim_batch
        self.claim_job = claims.claim_job
        self.watch_new_jobs = claims.watch_new_jobs
        # The lease (leases.py).
        self.heartbeat = leases.heartbeat
        self.renew_leases = leases.renew_leases
        # The outcomes, all fenced, and lease recovery (outcomes.py).
        self.complete = outcomes.complete
        self.complete_many = outcomes.complete_many
        self.reschedule = outcomes.reschedule
        self.fail = outcomes.fail
        self.release = outcomes.release
        self.cancel_claimed = outcomes.cancel_claimed
        self.write_progress = outcomes.write_progress
        self.expired_leases = outcomes.expired_leases
        self.recover = outcomes.recover
        self.quarantine = outcomes.quarantine

    # -- enqueue ------------------------------------------------------------

    def insert(self, doc: dict[str, Any]) -> None:
        """Insert one job document whose ``_id`` is already set; idempotent under retry."""
        store = self._store
        tries = 0

        def call() -> None:
            nonlocal tries
            tries += 1
            try:
                store.collection.insert_one(doc)
            except DuplicateKeyError as exc:
                # An earlier try that raised may have inserted it: same _id, ours.
                if tries > 1 and duplicate_field(exc) == "_id":
                    return
                raise InvalidJobError(f"job violates a unique index of {store.model.__name__}: {exc}") from exc

        store.retry(call, "insert")

    def insert_many(self, docs: Sequence[dict[str, Any]]) -> None:
        """Insert job documents with preset ``_id`` values; a retry inserts only the missing ones."""
        if not docs:
            return
        store = self._store
        tries = 0

        def call() -> None:
            nonlocal tries
            tries += 1
            todo = list(docs)
            if tries > 1:
                ids = [d["_id"] for d in docs]
                present = {d["_id"] for d in store.collection.find({"_id": {"$in": ids}}, {"_id": 1})}
                todo = [d for d in docs if d["_id"] not in present]
                if not todo:
                    return
            try:
                store.collection.insert_many(todo, ordered=True)
            except BulkWriteError as exc:
                if is_transient(exc):
                    # Only write-concern errors: the jobs are in, the reply could not
                    # confirm replication. Retry; the retry inserts only missing _ids.
                    raise
                raise self._undo_partial_insert(docs, exc) from exc

        store.retry(call, "insert_many")

    def _undo_partial_insert(self, docs: Sequence[dict[str, Any]], exc: BulkWriteError) -> InvalidJobError:
        # An ordered insert stops at the first job the server rejects (e.g. an
        # app's unique index); the ones before it are in. Remove those that no
        # worker has touched yet, so a rejected batch leaves nothing behind.
        errors = exc.details.get("writeErrors") or [{}]
        first = errors[0]
        bad_id = (first.get("op") or {}).get("_id")
        position = next((i for i, d in enumerate(docs) if d["_id"] == bad_id), first.get("index", "?"))
        ids = [d["_id"] for d in docs if d["_id"] != bad_id]
        collection = self._store.collection
        removed = collection.delete_many({"_id": {"$in": ids}, "status": PENDING, "attempts": 0}).deleted_count
        kept = collection.count_documents({"_id": {"$in": ids}})
        message = f"jobs[{position}] rejected by the server: {first.get('errmsg', exc)}; "
        message += f"{removed} job(s) of the batch removed again"
        if kept:
            message += f", {kept} already claimed by a worker and left in place"
        return InvalidJobError(message)

    def insert_unique(self, doc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Insert a job that has a ``unique_key``; return None if inserted, else the job holding the key.

        The unique index decides between concurrent enqueues. A key held by a
        finished job whose window (``unique_until``) is over is released here,
        lazily, by the enqueue that needs it: no sweeper, and no extra write
        on the completion path.
        """
        store = self._store
        key = doc["unique_key"]
        tries = 0

        def call() -> Optional[dict[str, Any]]:
            nonlocal tries
            for _ in range(_MAX_RELEASES):
                tries += 1
                try:
                    store.collection.insert_one(doc)
                    if self._indexes.protect_unique_insert(doc["_id"]):
                        return None
                    continue  # a duplicate in a collection re-created without the index: insert it again, checked
                except DuplicateKeyError as exc:
                    dup_field = duplicate_field(exc)
                    if dup_field == "_id" and tries > 1:  # an earlier try that raised had inserted it
                        if self._indexes.protect_unique_insert(doc["_id"]):
                            return None
                        continue
                    rejected = InvalidJobError(f"job violates a unique index of {store.model.__name__}: {exc}")
                    if "schedule" in doc and dup_field in ("schedule", "?"):
                        # A scheduled job (overlap=False): this fire time may already have its job.
                        fired = self.fire_holder(doc)
                        if fired is not None:
                            return None if fired["_id"] == doc["_id"] else fired
                    if dup_field not in ("unique_key", "?"):
                        raise rejected from exc
                holder = store.collection.find_one({"unique_key": key})
                if holder is None:
                    if dup_field == "?":  # the server did not say which index; not ours
                        raise rejected
                    continue  # released in the meantime
                if holder["_id"] == doc["_id"]:
                    return None
                until = holder.get("unique_until")
                if holder.get("status") not in FINISHED or (until is not None and until > store.now()):
                    return holder
                store.collection.update_one(
                    {"_id": holder["_id"], "unique_key": key, "status": holder["status"]},
                    {"$unset": {"unique_key": ""}},
                )
            raise InvalidJobError(f"unique_key {key!r} is contended; try again")

        return store.retry(call, "insert_unique")

    def fire_holder(self, doc: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The stored job of ``doc``'s schedule and fire time, if any."""
        return self._store.collection.find_one({"schedule": doc["schedule"], "fire_time": doc["fire_time"]})

    def insert_fire(self, doc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Insert the job of one fire time; None if inserted, else the job that holds the fire time (or the key).

        The unique index on ``(schedule, fire_time)`` decides between the
        processes firing the same schedule at the same moment. A job with a
        ``unique_key`` (``overlap=False``) goes through :meth:`insert_unique`,
        which also returns the schedule's unfinished job holding the key.
        """
        if "unique_key" in doc:
            return self.insert_unique(doc)
        store = self._store
        tries = 0

        def call() -> Optional[dict[str, Any]]:
            nonlocal tries
            tries += 1
            try:
                store.collection.insert_one(doc)
                if self._indexes.protect_unique_insert(doc["_id"]):
                    return None
                # A duplicate fire in a collection re-created without the index: insert it again, checked.
                store.collection.insert_one(doc)
                return None
            except DuplicateKeyError as exc:
                if tries > 1 or duplicate_field(exc) in ("schedule", "?"):
                    # The holder may be this very document, inserted by an
                    # earlier try whose reply was lost.
                    holder = self.fire_holder(doc)
                    if holder is not None:
                        return None if holder["_id"] == doc["_id"] else holder
                raise InvalidJobError(f"job violates a unique index of {store.model.__name__}: {exc}") from exc

        return store.retry(call, "insert_fire")
