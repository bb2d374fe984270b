"""How a claimed job's attempt ends: every outcome write of its owner, fenced by its lease.

Each write about a claimed job is filtered by its lease (:func:`.leases.fence`).
A retried write that matches nothing checks whether its own earlier try,
whose reply was lost, did the work: the token stays on the document until
the next claim replaces it, so "our token and the target status" means it
did. A rescue (:mod:`.recovery`) removes the token instead, so the old
owner's late writes are reported as lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from bson import ObjectId
from pymongo import UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure

from ..model import JobError, job_log_extra
from ..status import CANCELLED, COMPLETED, FAILED, PENDING
from .faults import is_too_large, short_error
from .finals import FinalJob
from .handle import JobStore
from .leases import ClaimedJob, rekey
from .marks import as_stored

__all__ = [
    "FencedWrite",
    "Outcomes",
    "UnstorableResult",
    "attempt_failed",
    "completion_update",
    "pushed",
    "statements",
]


@dataclass(frozen=True)
class UnstorableResult:
    """Stands for a handler result that cannot be stored; the completion records ``reason`` instead."""

    reason: str


def _ended(status: str, now: datetime) -> dict[str, Any]:
    """The update that ends a run for good as ``status``; its lease expiry goes, its token stays (see the module)."""
    return {"$set": {"status": status, "finished_at": now, "updated_at": now}, "$unset": {"lease_expires_at": ""}}


def completion_update(now: datetime, result: Any, progress: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The update that completes a run with the handler's ``result`` (None: no result field).

    ``progress`` is the run's last report (``ClaimedJob.progress``): one
    still buffered when the handler returned would otherwise be dropped, and
    the job would keep an earlier one.
    """
    update = _ended(COMPLETED, now)
    if isinstance(result, UnstorableResult):
        update["$set"]["result_error"] = result.reason
    elif result is not None:
        update["$set"]["result"] = result
    if progress is not None:
        update["$set"]["progress"] = dict(progress)
    return update


def pushed(store: JobStore, job_id: Any, error: JobError, key: Mapping[str, Any]) -> Optional[str]:
    """After a write that matched nothing: the job's status if an earlier try pushed this very ``error``, else None.

    A write that removed the token cannot recognise its earlier try by
    the token: it does by its record (the old token, its own time).
    """
    record = error.as_doc()
    record["at"] = as_stored(error.at)
    found = store.collection.find_one({"_id": job_id, **key}, {"errors": 1, "status": 1})
    if found is None or not any(e == record for e in found.get("errors") or []):
        return None
    return str(found.get("status"))


def attempt_failed(store: JobStore, status: str, error: JobError, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The update that ends an attempt with ``error``: recorded as the last one and in the bounded history."""
    return {
        "$set": {"status": status, **fields, "last_error": error.as_doc()},
        "$unset": {"lease_expires_at": ""},
        "$push": {"errors": {"$each": [error.as_doc()], "$slice": -store.config.max_error_history}},
    }


@dataclass(frozen=True)
class FencedWrite:
    """One outcome of a bulk write (:meth:`Outcomes.write_many`): the run it ends, the status it writes, the update."""

    job: ClaimedJob
    status: str
    update: Mapping[str, Any]
    #: Back to pending or failed only if no cancel was requested (the caller then cancels), as the single writes.
    uncancelled: bool = False

    @property
    def filter(self) -> dict[str, Any]:
        filt = self.job.fence
        if self.uncancelled:
            filt["cancel_requested"] = {"$ne": True}
        return filt

    def joins(self, other: FencedWrite) -> bool:
        """Whether one statement can write both: the same lease token, key values, fence and update object.

        The very object, not an equal one: ``1 == True == 1.0`` in Python,
        and a statement writes one value's BSON type for all.
        """
        return (
            self.update is other.update
            and self.job.token == other.job.token
            and self.uncancelled == other.uncancelled
            and self.job.key == other.job.key
        )


def statements(writes: Sequence[FencedWrite]) -> list[UpdateOne | UpdateMany]:
    """The bulk write's statements: one per group of writes that differ only by ``_id``.

    A batch claim leases its jobs under one token, and their no-result
    completions share one update (:meth:`Outcomes.complete_many`), so one ``update_many`` over their ids,
    fenced by that token and ``processing`` (and the key values), writes
    them all: per document the very fence of the single writes. It costs
    the server one statement instead of one per job. A group of one is the
    single fenced ``update_one``.
    """
    groups: list[list[FencedWrite]] = []
    for write in writes:
        group = next((g for g in groups if g[0].joins(write)), None)
        if group is None:
            groups.append([write])
        else:
            group.append(write)
    ops: list[UpdateOne | UpdateMany] = []
    for group in groups:
        head = group[0]
        if len(group) == 1:
            ops.append(UpdateOne(head.filter, dict(head.update)))
        else:
            ops.append(UpdateMany({**head.filter, "_id": {"$in": [w.job.id for w in group]}}, dict(head.update)))
    return ops


class Outcomes:
    """Writes the outcome of each attempt: completed, failed, rescheduled, released, cancelled, recovered."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def complete(self, job: ClaimedJob, result: Any = None) -> bool:
        """Mark a claimed job completed; False if the lease was lost first."""
        return self._told(job.doc, COMPLETED, self._complete(job, result))

    def _complete(self, job: ClaimedJob, result: Any) -> bool:
        now = self._store.now()
        try:
            return self._fenced(job, completion_update(now, result, job.progress), COMPLETED, "complete")
        except (DocumentTooLarge, OperationFailure) as exc:
            # The handler did finish: a result too large for what is left of its
            # document (a big payload enqueued under other limits) is recorded as
            # dropped, in ``result_error``, and the job completes. Without this the
            # refused write would leave the job ``processing`` and run it again.
            if result is None or isinstance(result, UnstorableResult) or not is_too_large(exc):
                raise
            message = short_error(exc)
            self._store.log.warning(
                "completion of job %s refused as too large (%s); completing it without its result",
                job.id,
                message,
                extra=job_log_extra(job.doc),
            )
            reason = f"not stored: the job document with it would exceed MongoDB's 16 MiB limit ({message})"
            dropped = UnstorableResult(reason[: self._store.config.max_error_chars])
            return self._fenced(job, completion_update(now, dropped, job.progress), COMPLETED, "complete")

    def complete_many(self, jobs: Sequence[tuple[ClaimedJob, Any]]) -> set[tuple[ObjectId, str]]:
        """Mark many claimed jobs completed in one bulk write; return the runs ``(id, token)`` whose write landed."""
        now = self._store.now()
        bare = completion_update(now, None)  # one object for every run without result or progress: see statements()

        def update(job: ClaimedJob, result: Any) -> dict[str, Any]:
            return bare if result is None and job.progress is None else completion_update(now, result, job.progress)

        writes = [FencedWrite(job, COMPLETED, update(job, result)) for job, result in jobs]
        return self.write_many(writes, "complete_many")

    def write_many(self, writes: Sequence[FencedWrite], op: str = "write_many") -> set[tuple[ObjectId, str]]:
        """Write many outcomes in one bulk write; return the runs ``(id, token)`` whose write landed.

        Each update carries its own fence (``_id``, token, ``processing``), so
        a lost lease fails only its own job; writes that differ only by
        ``_id`` go as one statement (:func:`statements`). When fewer matched than sent, the
        runs whose job has its target status under their token (by this try
        or an earlier one whose reply was lost) count as written; the others
        lost their lease (or, for a write that is ``uncancelled``, had a
        cancel requested). Runs, not job ids: two runs of one job (a stale
        one and a newer claim) can share a batch, and only the newer one's
        write lands.
        """
        if not writes:
            return set()
        targets = {(w.job.id, w.job.token): w.status for w in writes}
        jobs = self._store.collection

        def bulk(some: Sequence[FencedWrite]) -> Optional[list[dict[str, Any]]]:
            """Write ``some``: None when every write matched, else the documents of their jobs now."""
            try:
                if jobs.bulk_write(statements(some), ordered=False).matched_count == len(some):
                    return None
            except BulkWriteError:
                pass  # some writes were rejected; find out which below
            ids = list({w.job.id for w in some})
            keyed = self._store.shard_key.targeted({"_id": {"$in": ids}}, [w.job.key for w in some])
            return list(jobs.find(keyed, {"status": 1, "lease_token": 1}))

        def call() -> set[tuple[ObjectId, str]]:
            found = bulk(writes)
            if found is None:
                return set(targets)
            seen = {d["_id"] for d in found}
            moved = rekey(self._store, [w.job for w in writes if w.job.id not in seen])
            if moved:  # the app changed their shard key values: write again under the new ones
                again = bulk([w for w in writes if any(w.job is job for job in moved)])
                landed = [{"_id": j.id, "lease_token": j.token, "status": targets[(j.id, j.token)]} for j in moved]
                found += landed if again is None else again
            runs = ((d["_id"], str(d.get("lease_token")), d.get("status")) for d in found)
            return {(job_id, token) for job_id, token, status in runs if targets.get((job_id, token)) == status}

        landed = self._store.retry(call, op)
        if self._store.finals.active:  # the final writes that landed, in one notice
            final = (COMPLETED, FAILED, CANCELLED)
            runs = [(w, (w.job.id, w.job.token)) for w in writes if w.status in final]
            self._store.finals.notify([FinalJob(w.job.id, w.status, w.job.doc) for w, run in runs if run in landed])
        return landed

    def rescheduling(self, job: ClaimedJob, run_at: datetime, error: JobError) -> FencedWrite:
        """The bulk form of :meth:`reschedule`."""
        update = attempt_failed(self._store, PENDING, error, {"run_at": run_at, "updated_at": self._store.now()})
        return FencedWrite(job, PENDING, update, uncancelled=True)

    def failure(self, job: ClaimedJob, error: JobError) -> FencedWrite:
        """The bulk form of :meth:`fail`."""
        now = self._store.now()
        update = attempt_failed(self._store, FAILED, error, {"finished_at": now, "updated_at": now})
        return FencedWrite(job, FAILED, update, uncancelled=True)

    def cancellation(self, job: ClaimedJob) -> FencedWrite:
        """The bulk form of :meth:`cancel_claimed`."""
        return FencedWrite(job, CANCELLED, _ended(CANCELLED, self._store.now()))

    def reschedule(self, job: ClaimedJob, run_at: datetime, error: JobError) -> bool:
        """Return a failed attempt to ``pending`` at ``run_at``; False if the lease is lost or a cancel requested."""
        update = attempt_failed(self._store, PENDING, error, {"run_at": run_at, "updated_at": self._store.now()})
        return self._fenced(job, update, PENDING, "reschedule", uncancelled=True)

    def fail(self, job: ClaimedJob, error: JobError) -> bool:
        """Fail a claimed job for good; False if the lease was lost or a cancel requested."""
        now = self._store.now()
        update = attempt_failed(self._store, FAILED, error, {"finished_at": now, "updated_at": now})
        # Fenced on the cancel request too, like reschedule: a job whose
        # cancellation was requested ends cancelled (the caller cancels it).
        return self._told(job.doc, FAILED, self._fenced(job, update, FAILED, "fail", uncancelled=True))

    def release(self, job: ClaimedJob) -> bool:
        """Hand back a claimed job that never started: ``pending`` again, attempt not counted."""
        update = {
            "$set": {"status": PENDING, "updated_at": self._store.now()},
            "$inc": {"attempts": -1},
            "$unset": {"lease_expires_at": ""},
        }
        return self._fenced(job, update, PENDING, "release", uncancelled=True)

    def throttle(self, job: ClaimedJob, run_at: datetime) -> bool:
        """Back to ``pending`` at ``run_at``, attempt not counted (a 429); False if the lease is lost first."""
        update = {
            "$set": {"status": PENDING, "run_at": run_at, "updated_at": self._store.now()},
            "$inc": {"attempts": -1},
            "$unset": {"lease_expires_at": ""},
        }
        return self._fenced(job, update, PENDING, "throttle", uncancelled=True)

    def cancel_claimed(self, job: ClaimedJob) -> bool:
        """End a claimed job ``cancelled`` (fenced); False if the lease was lost."""
        ended = self._fenced(job, _ended(CANCELLED, self._store.now()), CANCELLED, "cancel_claimed")
        return self._told(job.doc, CANCELLED, ended)

    def abandon(self, job: ClaimedJob, error: JobError, run_at: Optional[datetime]) -> Optional[str]:
        """End an abandoned attempt (time limit or shutdown): ``pending`` at ``run_at``, else ``failed``.

        A job whose cancellation was requested ends ``cancelled``. Unlike the
        owner's other writes, this one removes the lease token, as a rescue
        does: the abandoned handler may still be running, and its late
        writes must match nothing and fail the "was it my earlier try?"
        check, whatever the job went through since. Returns the status
        written, or None if the lease was lost first.
        """
        now = self._store.now()
        ended = {"finished_at": now, "updated_at": now}
        target, fields = (FAILED, ended) if run_at is None else (PENDING, {"run_at": run_at, "updated_at": now})
        writes = []
        for status, cancel, extra in ((target, {"$ne": True}, fields), (CANCELLED, True, ended)):
            update = attempt_failed(self._store, status, error, extra)
            update["$unset"]["lease_token"] = ""
            writes.append((status, cancel, update))

        def call() -> Optional[str]:
            for _ in range(2):
                for status, cancel, update in writes:
                    if self._store.collection.update_one(
                        {**job.fence, "cancel_requested": cancel}, update
                    ).matched_count:
                        return status
                if not rekey(self._store, [job]):
                    break  # else the app changed the job's shard key values: write again under the new ones
            return pushed(self._store, job.id, error, job.key)

        written = self._store.retry(call, "abandon")
        if written in (FAILED, CANCELLED):
            self._store.finals.notify_one(job.doc, written)
        return written

    def write_progress(self, job: ClaimedJob, progress: Mapping[str, Any]) -> Optional[bool]:
        """Store a running job's progress (fenced); None if the lease is gone, else whether a cancel was requested."""
        update = {"$set": {"progress": dict(progress), "updated_at": self._store.now()}}

        def call() -> Optional[dict[str, Any]]:
            found = self._store.collection.find_one_and_update(job.fence, update, projection={"cancel_requested": 1})
            if found is None and rekey(self._store, [job]):  # the app changed the job's shard key values
                found = self._store.collection.find_one_and_update(
                    job.fence, update, projection={"cancel_requested": 1}
                )
            return found

        doc = self._store.retry(call, "write_progress")
        return None if doc is None else bool(doc.get("cancel_requested"))

    def _fenced(
        self, job: ClaimedJob, update: Mapping[str, Any], target: str, op: str, *, uncancelled: bool = False
    ) -> bool:
        def call() -> bool:
            for _ in range(2):
                filt = job.fence
                if uncancelled:  # back to pending only if no cancel was requested; the caller then cancels
                    filt["cancel_requested"] = {"$ne": True}
                if self._store.collection.update_one(filt, update).matched_count:
                    return True
                # Nothing matched: either the lease is gone, or an earlier try (ours
                # or the driver's own retryable-write retry) applied the write and
                # only its reply was lost. The token stays on the document until the
                # next claim replaces it, so "our token and the target status"
                # means the write was ours. Not found under its key values: the app
                # may have changed them (:func:`.leases.rekey`), then write again.
                doc = self._store.collection.find_one({"_id": job.id, **job.key}, {"status": 1, "lease_token": 1})
                if doc is None and rekey(self._store, [job]):
                    continue
                return doc is not None and doc.get("lease_token") == job.token and doc.get("status") == target
            return False

        return self._store.retry(call, op)

    def _told(self, doc: Mapping[str, Any], status: str, written: bool) -> bool:
        """Pass on ``written``, after telling the listeners of final writes when it is True."""
        if written:
            self._store.finals.notify_one(doc, status)
        return written
