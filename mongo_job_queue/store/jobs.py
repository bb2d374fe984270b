"""``store.jobs``: everything about one job's lifecycle, behind one object.

:class:`Jobs` holds the insert path itself and exposes the claim
(:mod:`.claims`), the lease heartbeat (:mod:`.leases`), the outcome
writes (:mod:`.outcomes`) and lease recovery (:mod:`.recovery`) as its own methods, so a caller writes
``store.jobs.insert``, ``store.jobs.claim``, ``store.jobs.complete``
without knowing which module holds each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..errors import InvalidJobError
from ..status import BLOCKED, FINISHED, PENDING
from .claims import Claims
from .faults import duplicate_field, is_transient
from .handle import JobStore
from .indexes import Indexes
from .keyed_insert import KeyedInsert
from .leases import Leases
from .outcomes import Outcomes
from .recovery import Recovery

__all__ = ["Jobs"]

_MAX_RELEASES = 10


class Jobs:
    """Insert, claim, keep the lease of, and end the jobs of one store (see the module docstring)."""

    def __init__(self, store: JobStore, indexes: Indexes) -> None:
        self._store = store
        self._indexes = indexes
        outcomes = Outcomes(store)
        recovery = Recovery(store)
        claims = Claims(store, recovery, store.limits)
        leases = Leases(store, store.limits)
        #: The insert of a guarded job when the model declares a shard key (keyed_insert.py).
        self.keyed = KeyedInsert(store, lambda doc, field, exc, again: self._holder(doc, field, exc, retried=again))
        # The claim path (claims.py).
        self.claim = claims.claim
        self.claim_batch = claims.claim_batch
        self.claim_job = claims.claim_job
        self.peek_due = claims.peek_due
        self.watch_new_jobs = claims.watch_new_jobs
        self.strays = claims.strays  # jobs leased by claims whose reply was lost (strays.py)
        # The lease (leases.py).
        self.heartbeat = leases.heartbeat
        self.renew_leases = leases.renew_leases
        # The outcomes, all fenced (outcomes.py).
        self.complete = outcomes.complete
        self.complete_many = outcomes.complete_many
        self.write_many = outcomes.write_many
        # Their bulk forms, for write_many.
        self.rescheduling = outcomes.rescheduling
        self.failure = outcomes.failure
        self.cancellation = outcomes.cancellation
        self.reschedule = outcomes.reschedule
        self.fail = outcomes.fail
        self.release = outcomes.release
        self.throttle = outcomes.throttle
        self.cancel_claimed = outcomes.cancel_claimed
        self.abandon = outcomes.abandon
        self.write_progress = outcomes.write_progress
        # Lease recovery and quarantine (recovery.py).
        self.expired_leases = recovery.expired_leases
        self.recover = recovery.recover
        self.quarantine = recovery.quarantine

    # -- enqueue ------------------------------------------------------------

    def insert(self, doc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Insert one job whose ``_id`` is set; None once it is stored, else the job that holds its place.

        The one insert path of every single job, plain, unique or fired by a
        schedule, idempotent under retry: a try whose reply was lost may
        have inserted the job, and the next try recognises it by its ``_id``.

        A job with a ``unique_key``, or a schedule's job with its
        ``(schedule, fire_time)``, is guarded by a unique index, which
        decides between concurrent enqueues and between the processes
        firing one schedule. The job holding the key (unfinished, or
        finished within its ``unique_until``) or the fire time is returned
        and nothing is inserted. A key held by a finished job whose window
        is over is released here, lazily, by the enqueue that needs it: no
        sweeper, and no extra write on the completion path.

        With a declared shard key the unique indexes cannot be unique (a
        sharded collection enforces only those its shard key prefixes): the
        keys are then key documents inserted with the job in one transaction
        (:mod:`.keyed_insert`), under the same rules.

        Raises:
            InvalidJobError: another unique index (an app's) refused the job,
                or its key stayed contended.
        """
        store = self._store
        guarded = "unique_key" in doc or "schedule" in doc
        if guarded and store.shard_key:
            return self.keyed.insert(doc)
        tries = 0

        def call() -> Optional[dict[str, Any]]:
            nonlocal tries
            for _ in range(_MAX_RELEASES):
                tries += 1
                try:
                    store.collection.insert_one(doc)
                except DuplicateKeyError as exc:
                    dup_field = duplicate_field(exc)
                    # On a retry, an earlier try whose reply was lost may have inserted
                    # it; the server may name any of the indexes the copy collides on.
                    mine = tries > 1 and (dup_field == "_id" or self._stored(doc["_id"]))
                    if not mine and dup_field == "_id":
                        # A job preset with this _id (a batch callback) is already stored: it holds the place.
                        taken = store.collection.find_one({"_id": doc["_id"]})
                        if taken is not None:
                            return taken
                    if not mine:
                        holder = self._holder(doc, dup_field, exc, retried=tries > 1)
                        if holder is None:
                            continue  # the key was released: insert again
                        return None if holder["_id"] == doc["_id"] else holder
                if not guarded or self._indexes.protect_unique_insert(doc["_id"]):
                    return None
                # A duplicate in a collection re-created without the index was taken out: insert again, checked.
            if "unique_key" in doc:
                raise InvalidJobError(f"unique_key {doc['unique_key']!r} is contended; try again")
            raise InvalidJobError(f"the fire time of schedule {doc.get('schedule')!r} is contended; try again")

        return store.retry(call, "insert")

    def _stored(self, job_id: Any) -> bool:
        return self._store.collection.find_one({"_id": job_id}, {"_id": 1}) is not None

    def _holder(
        self, doc: Mapping[str, Any], dup_field: str, exc: DuplicateKeyError, *, retried: bool
    ) -> Optional[dict[str, Any]]:
        """The job holding ``doc``'s fire time or unique key after ``exc``; None if the key is free to take now.

        Raises:
            InvalidJobError: the index that refused ``doc`` is not one of the queue's.
        """
        store = self._store
        rejected = InvalidJobError(f"job violates a unique index of {store.model.__name__}: {exc}")
        if "schedule" in doc and (retried or dup_field in ("schedule", "?")):
            # This fire time may already have its job: another process's, or this
            # very one, inserted by an earlier try whose reply was lost.
            fired = store.collection.find_one({"schedule": doc["schedule"], "fire_time": doc["fire_time"]})
            if fired is not None:
                return fired
        if "unique_key" not in doc or dup_field not in ("unique_key", "?"):
            raise rejected from exc
        key = doc["unique_key"]
        holder = store.collection.find_one({"unique_key": key})
        if holder is None:
            if dup_field == "?":  # the server did not say which index; not ours
                raise rejected from exc
            return None  # released in the meantime
        until = holder.get("unique_until")
        finished = holder.get("status") in FINISHED and (until is None or until <= store.now())
        if holder["_id"] == doc["_id"] or not finished:
            return holder
        store.collection.update_one(
            {"_id": holder["_id"], "unique_key": key, "status": holder["status"]},
            {"$unset": {"unique_key": ""}},
        )
        return None

    def insert_many(self, docs: Sequence[dict[str, Any]]) -> None:
        """Insert job documents with preset ``_id`` values in one bulk write; a retry inserts only the missing ones.

        The bulk path of plain jobs (``enqueue_many`` takes no unique key):
        an ordered insert, so a job the server rejects leaves the batch's
        earlier jobs in, and those are removed again.
        """
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
        untouched = {"_id": {"$in": ids}, "status": {"$in": [PENDING, BLOCKED]}, "attempts": 0}
        removed = collection.delete_many(untouched).deleted_count
        kept = collection.count_documents({"_id": {"$in": ids}})
        message = f"jobs[{position}] rejected by the server: {first.get('errmsg', exc)}; "
        message += f"{removed} job(s) of the batch removed again"
        if kept:
            message += f", {kept} already claimed by a worker and left in place"
        return InvalidJobError(message)
