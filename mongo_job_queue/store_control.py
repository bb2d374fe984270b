"""The store's job-control queries: retention indexes, unique keys, pause state, cancellation, progress.

:class:`ControlQueries` is a mixin of :class:`~mongo_job_queue.store.JobStore`
like :mod:`.store_admin`, so every query still lives behind the one store
object. Pause state and schedule state live in a small second collection,
``<jobs collection>_control``, that the store owns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError, OperationFailure

from .clock import after_ms
from .errors import InvalidJobError
from .model import JobStatus
from .store_base import StoreBase

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from .records import ClaimedJob

__all__ = ["FINISHED", "ControlQueries", "Heartbeat", "PauseState", "duplicate_field", "retention_index_name"]

T = TypeVar("T")

PENDING = JobStatus.PENDING.value
PROCESSING = JobStatus.PROCESSING.value
COMPLETED = JobStatus.COMPLETED.value
FAILED = JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value
FINISHED = (COMPLETED, FAILED, CANCELLED)

_PAUSE_ID = "pause"
#: Extra time bound of a TTL index build on a large collection, on top of db_timeout_ms.
_INDEX_BUILD_MS = 300_000


def retention_index_name(status: str) -> str:
    """The name of the TTL index that removes finished jobs of ``status``."""
    return f"mjq_ttl_{status}"


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


class ControlQueries(StoreBase):
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
        return jobs.database[f"{jobs.name}_control"]

    # -- retention ----------------------------------------------------------

    def retention_seconds(self) -> dict[str, Optional[int]]:
        """The TTL per finished status, in whole seconds (rounded up), or None to keep forever."""
        settings = {
            COMPLETED: self.config.retention_completed_ms,
            FAILED: self.config.retention_failed_ms,
            CANCELLED: self.config.retention_cancelled_ms,
        }
        return {status: None if ms is None else -(-ms // 1000) for status, ms in settings.items()}

    def ensure_retention_indexes(self) -> None:
        """Make the per-status TTL indexes match the retention settings.

        One partial TTL index per finished status on ``finished_at``, named by
        status, so unfinished jobs (which the filter never matches) are never
        removed. A changed setting is applied with ``collMod`` (or a drop and
        create where the server refuses it); a setting of None drops the index.
        """
        wanted = self.retention_seconds()

        def call() -> None:
            existing = {ix["name"]: ix for ix in self.collection.list_indexes()}
            for status, seconds in wanted.items():
                name = retention_index_name(status)
                index = existing.get(name)
                if seconds is None:
                    if index is not None:
                        self.collection.drop_index(name)
                        self.log.info("retention of %s jobs off: dropped TTL index %s", status, name)
                    continue
                if index is None:
                    self._create_ttl_index(status, seconds)
                    continue
                same_shape = dict(index.get("key", {})) == {"finished_at": 1} and dict(
                    index.get("partialFilterExpression") or {}
                ) == {"status": status}
                if same_shape and index.get("expireAfterSeconds") == seconds:
                    continue
                self.log.info(
                    "retention of %s jobs changed from %s s to %s s: updating TTL index %s",
                    status,
                    index.get("expireAfterSeconds"),
                    seconds,
                    name,
                )
                if same_shape and "expireAfterSeconds" in index:
                    try:
                        self.collection.database.command(
                            {"collMod": self.collection.name, "index": {"name": name, "expireAfterSeconds": seconds}}
                        )
                        continue
                    except (OperationFailure, TypeError, NotImplementedError) as exc:
                        self.log.debug("collMod refused (%r); recreating %s", exc, name)
                self.collection.drop_index(name)
                self._create_ttl_index(status, seconds)

        self._retry(call, "ensure_retention_indexes", extra_ms=_INDEX_BUILD_MS)

    def _create_ttl_index(self, status: str, seconds: int) -> None:
        try:
            self.collection.create_index(
                [("finished_at", 1)],
                name=retention_index_name(status),
                expireAfterSeconds=seconds,
                partialFilterExpression={"status": status},
            )
        except OperationFailure as exc:
            # Another process created it at the same moment, perhaps with its
            # own setting: the last process to start decides, as documented.
            if exc.code not in (85, 86):  # IndexOptionsConflict, IndexKeySpecsConflict
                raise

    def retention_indexes(self) -> dict[str, dict[str, Any]]:
        """The TTL indexes on the jobs collection by name, as the server reports them."""
        return {
            ix["name"]: dict(ix)
            for ix in self._retry(lambda: list(self.collection.list_indexes()), "list_indexes")
            if "expireAfterSeconds" in ix
        }

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
                    return None
                except DuplicateKeyError as exc:
                    dup_field = duplicate_field(exc)
                    if dup_field == "_id" and tries > 1:
                        return None  # an earlier try that raised had inserted it
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
                {"_id": {"$in": list(leases)}, "status": PROCESSING}, {"lease_token": 1, "cancel_requested": 1}
            )
            held = {d["_id"]: d for d in docs if d.get("lease_token") == leases[d["_id"]]}
            cancel = {job_id for job_id, d in held.items() if d.get("cancel_requested")}
            if cancel:
                renew(cancel, skip_cancelled=False)
            return Heartbeat(set(leases) - set(held), cancel)

        return self._retry(call, "renew_leases")

    # -- cancellation -------------------------------------------------------

    def request_cancel(self, job_id: ObjectId) -> Optional[str]:
        """Cancel a pending job, or flag a running one; return ``"cancelled"``, ``"requested"`` or None."""
        now = self.now()

        def call() -> Optional[str]:
            cancelled = self.collection.update_one(
                {"_id": job_id, "status": PENDING},
                {"$set": {"status": CANCELLED, "finished_at": now, "updated_at": now}},
            )
            if cancelled.matched_count:
                return "cancelled"
            requested = self.collection.update_one(
                {"_id": job_id, "status": PROCESSING}, {"$set": {"cancel_requested": True, "updated_at": now}}
            )
            if requested.matched_count:
                return "requested"
            doc = self.collection.find_one({"_id": job_id}, {"status": 1, "cancel_requested": 1})
            # A retried call whose first try applied: report what it did.
            if doc is not None and doc.get("status") == PROCESSING and doc.get("cancel_requested"):
                return "requested"
            return None

        return self._retry(call, "request_cancel")

    def cancel_jobs(self, filt: Mapping[str, Any], *, running: bool) -> tuple[int, int]:
        """Cancel the pending jobs matching ``filt`` (and flag the running ones); ``(cancelled, requested)``.

        ``filt`` holds equality on ``queue`` and ``type`` at most, so with the
        status the claim index's prefix serves both updates.
        """
        now = self.now()

        def call() -> tuple[int, int]:
            cancelled = self.collection.update_many(
                {**filt, "status": PENDING}, {"$set": {"status": CANCELLED, "finished_at": now, "updated_at": now}}
            ).modified_count
            requested = 0
            if running:
                requested = self.collection.update_many(
                    {**filt, "status": PROCESSING, "cancel_requested": {"$ne": True}},
                    {"$set": {"cancel_requested": True, "updated_at": now}},
                ).modified_count
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
