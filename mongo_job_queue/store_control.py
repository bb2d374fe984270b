"""The store's job-control queries: unique keys, pause state, cancellation, progress (retention: a base class).

:class:`ControlQueries` is a mixin of :class:`~mongo_job_queue.store.JobStore`
like :mod:`.store_admin`, so every query still lives behind the one store
object. Pause state and schedule state live in a small second collection,
``<jobs collection>_control``, that the store owns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from .clock import after_ms
from .errors import InvalidJobError
from .status import ALL_STATUSES, CANCELLED, FINISHED, PENDING, PROCESSING
from .store_base import as_stored, new_mark, pushed_mark
from .store_collection import unique_insert_protected
from .store_retention import RetentionQueries, retention_index_name

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from .records import ClaimedJob

__all__ = ["FINISHED", "ControlQueries", "Heartbeat", "PauseState", "duplicate_field", "retention_index_name"]

T = TypeVar("T")


_PAUSE_ID = "pause"
# Bound on the heartbeat's follow-up read (by _id, at most one document per running job).
_HEARTBEAT_READ_MAX_TIME_MS = 5_000


@dataclass(frozen=True)
class PauseState:
    """Queues and job types that no worker claims from, as stored in the control collection."""

    queues: frozenset[str] = field(default_factory=frozenset)
    types: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Heartbeat:
    """What one heartbeat found: leases that are gone, and jobs whose cancellation was requested."""

    lost: set[ObjectId]
    cancel_requested: set[ObjectId]
    #: Ended by this worker's own outcome write while the beat was in flight: not lost.
    finished: set[ObjectId] = field(default_factory=set)


class ControlQueries(RetentionQueries):
    """Job-control queries; mixed into JobStore."""

    if TYPE_CHECKING:

        def _fenced(
            self, job: ClaimedJob, update: Mapping[str, Any], target: str, op: str, *, uncancelled: bool = False
        ) -> bool: ...

        def fire_holder(self, doc: Mapping[str, Any]) -> Optional[dict[str, Any]]: ...

    @property
    def control(self) -> Collection[dict[str, Any]]:
        """The control collection (pause and schedule state), beside the jobs collection."""
        jobs = self.collection
        # With the jobs view's codec options: read back as naive UTC like every job (store_collection.py).
        return jobs.database.get_collection(f"{jobs.name}_control", codec_options=jobs.codec_options)

    # -- unique jobs --------------------------------------------------------

    def insert_unique(self, doc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Insert a job that has a ``unique_key``; return None if inserted, else the job holding the key.

        The unique index decides between concurrent enqueues. A key held by a
        finished job whose window (``unique_until``) is over is released here,
        lazily, by the enqueue that needs it: no sweeper, and no extra write
        on the completion path.
        """
        key = doc["unique_key"]
        tries = 0

        def call() -> Optional[dict[str, Any]]:
            nonlocal tries
            for _ in range(_MAX_RELEASES):
                tries += 1
                try:
                    self.collection.insert_one(doc)
                    if unique_insert_protected(self.model, self.collection, doc["_id"]):
                        return None
                    continue  # a duplicate in a collection re-created without the index: insert it again, checked
                except DuplicateKeyError as exc:
                    dup_field = duplicate_field(exc)
                    if dup_field == "_id" and tries > 1:  # an earlier try that raised had inserted it
                        if unique_insert_protected(self.model, self.collection, doc["_id"]):
                            return None
                        continue
                    rejected = InvalidJobError(f"job violates a unique index of {self.model.__name__}: {exc}")
                    if "schedule" in doc and dup_field in ("schedule", "?"):
                        # A scheduled job (overlap=False): this fire time may already have its job.
                        fired = self.fire_holder(doc)
                        if fired is not None:
                            return None if fired["_id"] == doc["_id"] else fired
                    if dup_field not in ("unique_key", "?"):
                        raise rejected from exc
                holder = self.collection.find_one({"unique_key": key})
                if holder is None:
                    if dup_field == "?":  # the server did not say which index; not ours
                        raise rejected
                    continue  # released in the meantime
                if holder["_id"] == doc["_id"]:
                    return None
                until = holder.get("unique_until")
                if holder.get("status") not in FINISHED or (until is not None and until > self.now()):
                    return holder
                self.collection.update_one(
                    {"_id": holder["_id"], "unique_key": key, "status": holder["status"]},
                    {"$unset": {"unique_key": ""}},
                )
            raise InvalidJobError(f"unique_key {key!r} is contended; try again")

        return self._retry(call, "insert_unique")

    # -- pause and resume ---------------------------------------------------

    def set_paused(self, paused: bool, *, queues: Iterable[str] = (), types: Iterable[str] = ()) -> PauseState:
        """Add queues and job types to the paused sets (or remove them); return the new state."""
        queues, types = sorted(set(queues)), sorted(set(types))
        if paused:
            update: dict[str, Any] = {"$addToSet": {"queues": {"$each": queues}, "types": {"$each": types}}}
        else:
            update = {"$pull": {"queues": {"$in": queues}, "types": {"$in": types}}}
        update["$set"] = {"updated_at": self.now()}
        doc = self._retry(
            lambda: self.control.find_one_and_update(
                {"_id": _PAUSE_ID}, update, upsert=True, return_document=ReturnDocument.AFTER
            ),
            "set_paused",
        )
        return _pause_state(doc)

    def pause_state(self) -> PauseState:
        """The paused queues and job types, one read of one small document."""
        return _pause_state(self._retry(lambda: self.control.find_one({"_id": _PAUSE_ID}), "pause_state"))

    def heartbeat(
        self, leases: Mapping[ObjectId, str], progress: Mapping[ObjectId, Mapping[str, Any]] | None = None
    ) -> Heartbeat:
        """Extend the leases in ``leases``, writing buffered ``progress``; report lost leases and cancel requests.

        One bulk write when nothing is unusual. Each update also requires
        ``cancel_requested`` to be unset, so a job whose cancellation was
        requested fails to match: only then does the follow-up read run,
        which tells a lost lease from a cancel request, and the requested
        jobs' leases are renewed too (their handlers may still be running).
        """
        if not leases:
            return Heartbeat(set(), set())
        progress = progress or {}

        def renew(ids: Iterable[ObjectId], *, skip_cancelled: bool) -> int:
            now = self.now()
            ops = []
            for job_id in ids:
                fence: dict[str, Any] = {"_id": job_id, "lease_token": leases[job_id], "status": PROCESSING}
                if skip_cancelled:
                    fence["cancel_requested"] = {"$ne": True}
                fields: dict[str, Any] = {"lease_expires_at": after_ms(now, self.config.lease_ms), "updated_at": now}
                if job_id in progress:
                    fields["progress"] = dict(progress[job_id])
                ops.append(UpdateOne(fence, {"$set": fields}))
            return self.collection.bulk_write(ops, ordered=False).matched_count

        def call() -> Heartbeat:
            if renew(leases, skip_cancelled=True) == len(leases):
                return Heartbeat(set(), set())
            docs = self.collection.find(
                {"_id": {"$in": list(leases)}},
                {"status": 1, "lease_token": 1, "cancel_requested": 1},
                max_time_ms=_HEARTBEAT_READ_MAX_TIME_MS,
            )
            ours = {d["_id"]: d for d in docs if d.get("lease_token") == leases[d["_id"]]}
            held = {job_id for job_id, d in ours.items() if d.get("status") == PROCESSING}
            cancel = {job_id for job_id in held if ours[job_id].get("cancel_requested")}
            if cancel:
                renew(cancel, skip_cancelled=False)
            # A job that still carries our token but left "processing" was
            # ended by this worker's own outcome write, racing this beat: it
            # is finished, not lost (a claim or a rescue replaces the token).
            finished = set(ours) - held
            return Heartbeat(set(leases) - set(ours), cancel, finished)

        return self._retry(call, "renew_leases")

    # -- cancellation -------------------------------------------------------

    def request_cancel(self, job_id: ObjectId) -> Optional[str]:
        """Cancel a pending job, or flag a running one; return ``"cancelled"``, ``"requested"`` or None.

        One atomic decision: a single update chooses by the job's status as
        it is when the update applies, so a job that moves between pending
        and processing meanwhile (a retry rescheduled, a lease recovered, a
        claim) is still cancelled or flagged, never neither. The update also
        records what it did under this call's mark; a retried try reads that
        first, since after a lost reply the job may have moved on (a flagged
        job ended ``cancelled`` by its worker, a cancelled one queued again).
        """
        now = as_stored(self.now())
        mark = new_mark()
        filt = {"_id": job_id, "status": {"$in": [PENDING, PROCESSING]}}
        outcomes = {_did(mark, "cancelled"): "cancelled", _did(mark, "requested"): "requested"}
        tries = 0

        def call() -> Optional[str]:
            nonlocal tries
            tries += 1
            if tries > 1:
                ours = {"_id": job_id, "admin_marks": {"$in": list(outcomes)}}
                doc = self.collection.find_one(ours, {"admin_marks": 1})
                if doc is not None:
                    return next(outcomes[m] for m in doc["admin_marks"] if m in outcomes)
            before = self.collection.find_one_and_update(
                filt, _cancel_pipeline(now, mark), projection={"status": 1}, return_document=ReturnDocument.BEFORE
            )
            if before is None:
                return None  # finished or missing
            return "cancelled" if before.get("status") == PENDING else "requested"

        return self._retry(call, "request_cancel")

    def cancel_jobs(self, filt: Mapping[str, Any], *, running: bool) -> tuple[int, int]:
        """Cancel the pending jobs matching ``filt`` (and flag the running ones); ``(cancelled, requested)``.

        One update, atomic per job like :meth:`request_cancel`: a job that
        moves between pending and processing meanwhile is cancelled or
        flagged, whichever state it is in when the update reaches it.
        Each job records what this call did to it under the call's mark. The
        first try counts from its own reply (the cancelled ones by mark among
        the cancelled jobs, the rest of what it modified was flagged); a
        retry, whose earlier try's reply was lost, reads both counts back by
        mark from jobs of every status, whatever they did since. ``filt``
        holds equality on ``queue`` and ``type`` at most; with the status
        the claim index's prefix serves every query.
        """
        now = as_stored(self.now())
        mark = new_mark()
        flaggable = {"status": PROCESSING, "cancel_requested": {"$ne": True}}
        match = {**filt, "$or": [{"status": PENDING}, flaggable]} if running else {**filt, "status": PENDING}
        cancelled_mark, requested_mark = _did(mark, "cancelled"), _did(mark, "requested")
        any_status = {**filt, "status": {"$in": list(ALL_STATUSES)}}
        # A job flagged by one try and cancelled by a later one (its worker let it go) counts once.
        flagged_only = {"$all": [requested_mark], "$ne": cancelled_mark}
        ours_cancelled = {**filt, "status": CANCELLED, "admin_marks": cancelled_mark}
        tries = 0

        def call() -> tuple[int, int]:
            nonlocal tries
            tries += 1
            modified = self.collection.update_many(match, _cancel_pipeline(now, mark)).modified_count
            if tries == 1:
                cancelled = self.collection.count_documents(ours_cancelled)
                return cancelled, max(0, modified - cancelled)
            cancelled = self.collection.count_documents({**any_status, "admin_marks": cancelled_mark})
            requested = self.collection.count_documents({**any_status, "admin_marks": flagged_only}) if running else 0
            return cancelled, requested

        return self._retry(call, "cancel_jobs")

    def write_progress(self, job: ClaimedJob, progress: Mapping[str, Any]) -> Optional[bool]:
        """Store a running job's progress (fenced); None if the lease is gone, else whether a cancel was requested."""
        fence = {"_id": job.id, "lease_token": job.token, "status": PROCESSING}
        update = {"$set": {"progress": dict(progress), "updated_at": self.now()}}
        doc = self._retry(
            lambda: self.collection.find_one_and_update(fence, update, projection={"cancel_requested": 1}),
            "write_progress",
        )
        return None if doc is None else bool(doc.get("cancel_requested"))

    def cancel_claimed(self, job: ClaimedJob) -> bool:
        """End a claimed job ``cancelled`` (fenced); False if the lease was lost."""
        now = self.now()
        update = {
            "$set": {"status": CANCELLED, "finished_at": now, "updated_at": now},
            "$unset": {"lease_expires_at": ""},
        }
        return self._fenced(job, update, CANCELLED, "cancel_claimed")


def _did(mark: str, outcome: str) -> str:
    """The mark a cancel writes into ``admin_marks``: this call's mark and what it did to the job."""
    return f"{mark}:{outcome}"


def _cancel_pipeline(now: datetime, mark: str) -> list[dict[str, Any]]:
    """An update that cancels a pending job and flags a processing one, by the status it finds, under ``mark``."""
    pending = {"$eq": ["$status", PENDING]}
    did = {"$cond": [pending, _did(mark, "cancelled"), _did(mark, "requested")]}
    return [
        {
            "$set": {
                "status": {"$cond": [pending, CANCELLED, "$status"]},
                "finished_at": {"$cond": [pending, now, "$finished_at"]},
                "cancel_requested": {"$cond": [{"$eq": ["$status", PROCESSING]}, True, "$cancel_requested"]},
                "updated_at": now,
                "admin_marks": pushed_mark(did),
            }
        }
    ]


def _pause_state(doc: Optional[Mapping[str, Any]]) -> PauseState:
    doc = doc or {}
    return PauseState(frozenset(doc.get("queues") or ()), frozenset(doc.get("types") or ()))


_MAX_RELEASES = 10


def duplicate_field(exc: DuplicateKeyError) -> str:
    """The first field of the unique index a duplicate-key error names, or ``\"?\"``."""
    details = exc.details or {}
    key = list(details.get("keyPattern") or {})
    if key:
        return str(key[0])
    message = str(details.get("errmsg", exc))
    for index, field_name in (("mjq_unique", "unique_key"), ("mjq_schedule", "schedule"), ("_id_", "_id")):
        if index in message:
            return field_name
    return "?"
