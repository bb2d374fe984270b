"""The one class that talks to MongoDB.

Every query the queue makes lives in :class:`JobStore`, on raw pymongo
documents: the worker never touches ``Job.objects``. The claim, lease and
outcome paths are in this module; administrative and hygiene queries are in
its mixin :mod:`.store_admin`. Two rules hold for every write about a job:

* Writes about a claimed job are *fenced*: filtered by ``_id``, the claim's
  ``lease_token`` and ``status == processing``. A worker that lost its lease
  (frozen, partitioned, rescued) can never overwrite the new owner's state.
* Transient errors (failover, network) are retried a bounded number of times.
  Such an error means the write *may* have applied, so a retry that finds
  nothing to update checks whether its own earlier try did the work, using
  the lease token, before it reports a lost lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import mongoengine.connection
import pymongo
from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    sleep_using_event,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from .bounded import BoundedChangeStream
from .clock import Clock, after_ms, to_naive_utc, utcnow
from .config import QueueConfig
from .errors import InvalidJobError
from .model import BaseJob, JobStatus
from .records import ClaimedJob, ErrorRecord, LeaseOwnerInfo, completion_fields
from .store_admin import AdminQueries
from .store_control import ControlQueries, Heartbeat
from .store_schedule import ScheduleQueries
from .validation import stored_job_problems

__all__ = ["ClaimedJob", "ErrorRecord", "Heartbeat", "JobStore", "LeaseOwnerInfo", "is_transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PENDING = JobStatus.PENDING.value
PROCESSING = JobStatus.PROCESSING.value
COMPLETED = JobStatus.COMPLETED.value
FAILED = JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value

# Server error codes that mean "try again, maybe elsewhere" (replica-set state
# changes, shutdown, network). pymongo maps most to AutoReconnect/NotPrimaryError,
# but a failCommand or an old server can surface them as OperationFailure.
_MAX_QUARANTINES_PER_CLAIM = 10

#: Extra time bound of index creation, on top of db_timeout_ms.
_INDEX_BUILD_MS = 300_000

_TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def is_transient(exc: BaseException) -> bool:
    """True for errors after which the same call may succeed (and may already have)."""
    if isinstance(exc, (AutoReconnect, ConnectionFailure, WriteConcernError)):
        return True
    if isinstance(exc, PyMongoError) and exc.timeout:
        # db_timeout_ms ran out (NetworkTimeout on a dead connection, maxTimeMS,
        # server selection, a bulk write's last error): that says nothing about
        # the lease. The call may have applied, so it is retried like a failover.
        return True
    if isinstance(exc, BulkWriteError):
        # A bulk write whose only errors are write-concern errors applied its
        # writes; the reply just could not confirm replication. Retryable (and
        # the callers' retries are idempotent), unlike a rejected write.
        details = exc.details or {}
        return not details.get("writeErrors") and bool(details.get("writeConcernErrors"))
    if isinstance(exc, PyMongoError) and exc.has_error_label("RetryableWriteError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES


class JobStore(AdminQueries, ControlQueries, ScheduleQueries):
    """All MongoDB access of one queue, on the collection of the injected job model.

    Args:
        job_model: The app's concrete :class:`~mongo_job_queue.BaseJob` subclass.
        config: Validated queue settings.
        clock: Source of "now" (naive UTC).
        sleep: Sleep used between retries of a failed database call. By default
            it waits on the call's ``abort`` event, so a stopping worker is not
            held up by a retry of a claim it no longer wants.
    """

    def __init__(
        self,
        job_model: type[BaseJob],
        config: QueueConfig,
        *,
        clock: Clock = utcnow,
        sleep: Callable[[float], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.model = job_model
        self.config = config
        self.clock = clock
        self.log = logger or log
        self._sleep = sleep
        self._pid = os.getpid()
        self._offset = timedelta(0)
        self._next_sync = 0.0
        self._sync_lock = threading.Lock()

    # -- connection ---------------------------------------------------------

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        """The model's collection, reconnected in a forked child.

        A MongoClient must not cross ``fork()``: its sockets and monitor threads
        belong to the parent. MongoEngine caches the client per alias, so a
        child drops that cache (without closing the parent's sockets) and
        MongoEngine reconnects from the alias's saved settings.
        """
        if os.getpid() != self._pid:
            self._forget_inherited_client()
        return self.model._get_collection()  # type: ignore[no-any-return]

    def _forget_inherited_client(self) -> None:
        alias = self.model._meta.get("db_alias") or mongoengine.DEFAULT_CONNECTION_NAME
        mongoengine.connection._connections.pop(alias, None)
        mongoengine.connection._dbs.pop(alias, None)
        self.model._collection = None
        self._pid = os.getpid()

    def ensure_indexes(self) -> None:
        """Create the model's indexes (the claim index above all) and the retention TTL indexes; idempotent."""
        # An index build on a large existing collection takes longer than a query.
        self._retry(lambda: self.model.ensure_indexes(), "ensure_indexes", extra_ms=_INDEX_BUILD_MS)
        self.ensure_retention_indexes()

    def now(self) -> datetime:
        """The current time on the server's clock, as far as this process can tell.

        Every time the queue writes or compares (``run_at``, lease expiry) comes
        from here. With ``sync_clock`` the local clock is corrected by its
        offset from the server's, so all workers judge leases and due times
        by one clock, whatever their hosts' clocks say.
        """
        if self.config.sync_clock and time.monotonic() >= self._next_sync:
            self.sync_clock()
        return self.clock() + self._offset

    @property
    def clock_offset(self) -> timedelta:
        """Server time minus local time, as last measured."""
        return self._offset

    def sync_clock(self) -> None:
        """Measure the offset of the local clock from the server's ``hello.localTime``."""
        if not self._sync_lock.acquire(blocking=False):
            return  # another thread is measuring; use the current offset
        try:
            self._next_sync = time.monotonic() + self.config.clock_sync_interval_ms / 1000
            before = self.clock()
            with self.bounded():
                reply = self.collection.database.command("hello")
            after = self.clock()
            server = reply.get("localTime")
            if not isinstance(server, datetime):
                return
            # The server read its clock somewhere during the round trip; the
            # midpoint bounds the error by half the round trip.
            offset = to_naive_utc(server) - (before + (after - before) / 2)
            if abs(offset - self._offset) > timedelta(seconds=1):
                self.log.warning(
                    "this host's clock is %.1f s %s the database server's; correcting queue times by it",
                    abs(offset.total_seconds()),
                    "behind" if offset > timedelta(0) else "ahead of",
                )
            self._offset = offset
        except Exception as exc:  # noqa: BLE001 - keep the last offset; retry at the next interval
            self.log.debug("clock sync skipped: %r", exc)
        finally:
            self._sync_lock.release()

    # -- retry machinery ----------------------------------------------------

    def bounded(self, extra_ms: int = 0) -> contextlib.AbstractContextManager[None]:
        """A time bound for the database calls in a ``with`` block: ``db_timeout_ms`` (plus ``extra_ms``).

        pymongo's client-side operation timeout: it bounds server selection,
        connection checkout and the wait for a reply, and sends the remaining
        time as ``maxTimeMS``. Without it pymongo waits for a reply forever,
        so one call on a connection that a network partition silently cut
        would block a heartbeat well past its lease. Inside such a block
        pymongo ignores the client's own ``socketTimeoutMS`` and ``timeoutMS``,
        so a shorter one the app connected with is kept as the bound.
        """
        bound = self.config.db_timeout_s
        try:
            options = self.collection.database.client.options
            for own in (options.timeout, options.pool_options.socket_timeout):
                if own:
                    bound = min(bound, own)
        except Exception:  # noqa: BLE001 - no client yet: the config's bound, and the call says why
            pass
        return pymongo.timeout(bound + extra_ms / 1000)

    def _retry(self, fn: Callable[[], T], op: str, abort: threading.Event | None = None, *, extra_ms: int = 0) -> T:
        """Run ``fn`` with each try time-bounded (:meth:`bounded`); retry transient errors and timeouts."""

        def bounded_try() -> T:
            with self.bounded(extra_ms):
                return fn()

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "transient database error in %s (try %d of %d), retrying: %r",
                op,
                state.attempt_number,
                self.config.db_retry_attempts,
                exc,
                extra={"db_operation": op},
            )

        abort = abort or threading.Event()
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.config.db_retry_attempts) | stop_when_event_set(abort),
            wait=wait_exponential(multiplier=0.05, max=self.config.db_retry_max_delay_ms / 1000) + wait_random(0, 0.05),
            sleep=self._sleep or sleep_using_event(abort),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(bounded_try)

    # -- enqueue ------------------------------------------------------------

    def insert(self, doc: dict[str, Any]) -> None:
        """Insert one job document whose ``_id`` is already set; idempotent under retry."""
        tries = 0

        def call() -> None:
            nonlocal tries
            tries += 1
            try:
                self.collection.insert_one(doc)
            except DuplicateKeyError as exc:
                # An earlier try that raised may have inserted it: same _id, ours.
                if tries > 1 and _is_id_duplicate(exc):
                    return
                raise InvalidJobError(f"job violates a unique index of {self.model.__name__}: {exc}") from exc

        self._retry(call, "insert")

    def insert_many(self, docs: Sequence[dict[str, Any]]) -> None:
        """Insert job documents with preset ``_id`` values; a retry inserts only the missing ones."""
        if not docs:
            return
        tries = 0

        def call() -> None:
            nonlocal tries
            tries += 1
            todo = list(docs)
            if tries > 1:
                ids = [d["_id"] for d in docs]
                present = {d["_id"] for d in self.collection.find({"_id": {"$in": ids}}, {"_id": 1})}
                todo = [d for d in docs if d["_id"] not in present]
                if not todo:
                    return
            try:
                self.collection.insert_many(todo, ordered=True)
            except BulkWriteError as exc:
                raise self._undo_partial_insert(docs, exc) from exc

        self._retry(call, "insert_many")

    def _undo_partial_insert(self, docs: Sequence[dict[str, Any]], exc: BulkWriteError) -> InvalidJobError:
        # An ordered insert stops at the first job the server rejects (e.g. an
        # app's unique index); the ones before it are in. Remove those that no
        # worker has touched yet, so a rejected batch leaves nothing behind.
        errors = exc.details.get("writeErrors") or [{}]
        first = errors[0]
        bad_id = (first.get("op") or {}).get("_id")
        position = next((i for i, d in enumerate(docs) if d["_id"] == bad_id), first.get("index", "?"))
        ids = [d["_id"] for d in docs if d["_id"] != bad_id]
        removed = self.collection.delete_many({"_id": {"$in": ids}, "status": PENDING, "attempts": 0}).deleted_count
        kept = self.collection.count_documents({"_id": {"$in": ids}})
        message = f"jobs[{position}] rejected by the server: {first.get('errmsg', exc)}; "
        message += f"{removed} job(s) of the batch removed again"
        if kept:
            message += f", {kept} already claimed by a worker and left in place"
        return InvalidJobError(message)

    # -- claim and lease ----------------------------------------------------

    def claim(
        self,
        types: Iterable[str],
        queues: Iterable[str],
        owner: LeaseOwnerInfo,
        *,
        abort: threading.Event | None = None,
    ) -> ClaimedJob | None:
        """Atomically take the most urgent due job and lease it to ``owner``.

        One ``find_one_and_update`` on the claim index: equality on status,
        ``$in`` on queue and type, sorted by priority then ``run_at``, with
        ``run_at <= now`` as the range. No ``$or``, so the index serves it.
        """
        types, queues = list(types), list(queues)
        if not types or not queues:
            return None
        query = {"status": PENDING, "queue": {"$in": queues}, "type": {"$in": types}}
        # A document edited by hand (say, a string in 'attempts') makes the
        # claim's update fail at the head of the queue, every time. Fail that
        # document with the reason and claim the next one, instead of letting
        # one bad document stop the queue.
        for _ in range(_MAX_QUARANTINES_PER_CLAIM):
            try:
                return self._claim(query, owner, abort)
            except OperationFailure as exc:
                if is_transient(exc) or not self._quarantine_head(query, exc):
                    raise
        return None

    def claim_batch(
        self,
        types: Iterable[str],
        queues: Iterable[str],
        owner: LeaseOwnerInfo,
        limit: int,
        *,
        abort: threading.Event | None = None,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs in two round trips (three under contention).

        The same guarantees as :meth:`claim`, for k jobs at once: read the k
        most urgent due jobs, then lease them with one ``update_many`` that
        matches each only if no one touched it since the read (its
        ``lease_token`` and ``attempts`` are unchanged, and it is still pending
        and due). All k share one new token, which with ``_id`` still fences
        every later write per job. If another worker took some in between,
        the jobs that are ours are read back by that token.
        """
        if limit <= 1:
            one = self.claim(types, queues, owner, abort=abort)
            return [one] if one is not None else []
        types, queues = list(types), list(queues)
        if not types or not queues:
            return []
        query = {"status": PENDING, "queue": {"$in": queues}, "type": {"$in": types}}
        for _ in range(_MAX_QUARANTINES_PER_CLAIM):
            try:
                return self._claim_batch(query, owner, limit, abort)
            except OperationFailure as exc:
                if is_transient(exc) or not self._quarantine_head(query, exc):
                    raise
        return []

    def _claim_batch(
        self, query: dict[str, Any], owner: LeaseOwnerInfo, limit: int, abort: threading.Event | None
    ) -> list[ClaimedJob]:
        token = uuid.uuid4().hex
        tries = 0
        expires: datetime | None = None

        def mine() -> list[dict[str, Any]]:
            return list(self.collection.find({"status": PROCESSING, "lease_expires_at": expires, "lease_token": token}))

        def call() -> list[dict[str, Any]]:
            nonlocal tries, expires
            tries += 1
            if tries > 1 and expires is not None:
                claimed = mine()  # an earlier try may have applied before its reply was lost
                if claimed:
                    return claimed
            now = self.now()
            due = {**query, "run_at": {"$lte": now}}
            candidates = list(self.collection.find(due, sort=[("priority", -1), ("run_at", 1)], limit=limit))
            if not candidates:
                return []
            # The lease starts when it is written, not when the read began: on a
            # busy server the read alone can take a good part of a short lease.
            now = self.now()
            expires = after_ms(now, self.config.lease_ms)
            lease = {
                "status": PROCESSING,
                "lease_token": token,
                "lease_owner": owner.as_doc(),
                "lease_expires_at": expires,
                "started_at": now,
                "updated_at": now,
            }
            # Each claim changes lease_token or attempts, so an unchanged pair
            # means nobody claimed the job since we read it: the read is still
            # its state, and patching it locally saves reading it back.
            unchanged = [
                {"_id": d["_id"], "lease_token": d.get("lease_token"), "attempts": d.get("attempts")}
                for d in candidates
            ]
            result = self.collection.update_many({**due, "$or": unchanged}, {"$set": lease, "$inc": {"attempts": 1}})
            if result.modified_count == len(candidates):
                for doc in candidates:
                    doc.update(lease)
                    doc["attempts"] = int(doc.get("attempts") or 0) + 1
                return candidates
            return mine() if result.modified_count else []

        return [ClaimedJob(doc, token) for doc in self._retry(call, "claim_batch", abort)]

    def claim_job(self, job_id: ObjectId, owner: LeaseOwnerInfo) -> ClaimedJob | None:
        """Claim one specific pending job, due or not (inline/eager runs, admin "run now")."""
        return self._claim({"_id": job_id, "status": PENDING}, owner, None, due_only=False)

    def _claim(
        self,
        query: dict[str, Any],
        owner: LeaseOwnerInfo,
        abort: threading.Event | None,
        *,
        due_only: bool = True,
    ) -> ClaimedJob | None:
        token = uuid.uuid4().hex
        tries = 0
        expires: datetime | None = None

        def call() -> dict[str, Any] | None:
            nonlocal tries, expires
            tries += 1
            if tries > 1 and expires is not None:
                # The earlier try may have claimed a job before its reply was
                # lost; find it by our token (index: status, lease_expires_at).
                mine = self.collection.find_one(
                    {"status": PROCESSING, "lease_expires_at": expires, "lease_token": token}
                )
                if mine is not None:
                    return mine
            now = self.now()
            expires = after_ms(now, self.config.lease_ms)
            return self.collection.find_one_and_update(
                {**query, "run_at": {"$lte": now}} if due_only else query,
                {
                    "$set": {
                        "status": PROCESSING,
                        "lease_token": token,
                        "lease_owner": owner.as_doc(),
                        "lease_expires_at": expires,
                        "started_at": now,
                        "updated_at": now,
                    },
                    "$inc": {"attempts": 1},
                },
                sort=[("priority", -1), ("run_at", 1)],
                return_document=ReturnDocument.AFTER,
            )

        doc = self._retry(call, "claim", abort)
        return ClaimedJob(doc, token) if doc is not None else None

    def _quarantine_head(self, query: dict[str, Any], exc: OperationFailure) -> bool:
        head = self._retry(
            lambda: self.collection.find_one(
                {**query, "run_at": {"$lte": self.now()}}, sort=[("priority", -1), ("run_at", 1)]
            ),
            "claim_head",
        )
        problems = stored_job_problems(head) if head is not None else []
        if head is None or not problems:
            return False
        self.log.error("claim failed on a malformed job %s (%s); failing it", head["_id"], exc)
        return self.quarantine(head["_id"], problems, from_status=PENDING)

    def watch_new_jobs(
        self, types: Sequence[str], queues: Sequence[str], *, resume_after: Mapping[str, Any] | None, max_await_ms: int
    ) -> BoundedChangeStream:
        """A change stream of jobs becoming claimable: inserted pending, or set back to pending.

        Filtered on the server to this worker's queues and types (for
        inserts), so an idle worker hears only about work it can do. Needs a
        replica set or a sharded cluster; a standalone server raises.
        """
        match = {
            "$or": [
                {
                    "operationType": "insert",
                    "fullDocument.status": PENDING,
                    "fullDocument.queue": {"$in": list(queues)},
                    "fullDocument.type": {"$in": list(types)},
                },
                {"operationType": "update", "updateDescription.updatedFields.status": PENDING},
            ]
        }
        with self.bounded():
            stream = self.collection.watch(
                [{"$match": match}], resume_after=resume_after, max_await_time_ms=max_await_ms
            )
        # Each read waits up to max_await_ms on the server, plus the usual bound.
        return BoundedChangeStream(stream, self.bounded, max_await_ms)

    def renew_leases(self, leases: Mapping[ObjectId, str]) -> set[ObjectId]:
        """Extend the lease of every job in ``leases``; return the ids whose lease is gone."""
        return self.heartbeat(leases).lost

    # -- outcomes (all fenced) ---------------------------------------------

    def complete(self, job: ClaimedJob, result: Any = None) -> bool:
        """Mark a claimed job completed; False if the lease was lost first."""
        now = self.now()
        update: dict[str, Any] = {
            "$set": {"status": COMPLETED, "finished_at": now, "updated_at": now},
            "$unset": {"lease_expires_at": ""},
        }
        update["$set"].update(completion_fields(result))
        return self._fenced(job, update, COMPLETED, "complete")

    def complete_many(self, jobs: Sequence[tuple[ClaimedJob, Any]]) -> set[ObjectId]:
        """Mark many claimed jobs completed in one bulk write; return the ids whose write landed.

        Each update carries its own fence (``_id``, token, ``processing``), so
        a lost lease fails only its own job. When fewer matched than sent, the
        jobs that are completed under our token (by this try or an earlier one
        whose reply was lost) count as written; the others lost their lease.
        """
        if not jobs:
            return set()
        now = self.now()
        ops = []
        for job, result in jobs:
            update: dict[str, Any] = {
                "$set": {"status": COMPLETED, "finished_at": now, "updated_at": now},
                "$unset": {"lease_expires_at": ""},
            }
            update["$set"].update(completion_fields(result))
            ops.append(UpdateOne({"_id": job.id, "lease_token": job.token, "status": PROCESSING}, update))
        tokens = {job.id: job.token for job, _ in jobs}

        def call() -> set[ObjectId]:
            try:
                if self.collection.bulk_write(ops, ordered=False).matched_count == len(ops):
                    return set(tokens)
            except BulkWriteError:
                pass  # some writes were rejected; find out which below
            return {
                d["_id"]
                for d in self.collection.find({"_id": {"$in": list(tokens)}}, {"status": 1, "lease_token": 1})
                if d.get("status") == COMPLETED and d.get("lease_token") == tokens[d["_id"]]
            }

        return self._retry(call, "complete_many")

    def reschedule(self, job: ClaimedJob, run_at: datetime, error: ErrorRecord) -> bool:
        """Return a failed attempt to ``pending`` at ``run_at``; False if the lease is lost or a cancel requested."""
        update = {
            "$set": {"status": PENDING, "run_at": run_at, "updated_at": self.now(), "last_error": error.as_doc()},
            "$unset": {"lease_expires_at": ""},
            "$push": {"errors": {"$each": [error.as_doc()], "$slice": -self.config.max_error_history}},
        }
        return self._fenced(job, update, PENDING, "reschedule", uncancelled=True)

    def fail(self, job: ClaimedJob, error: ErrorRecord) -> bool:
        """Fail a claimed job for good; False if the lease was lost."""
        now = self.now()
        update = {
            "$set": {"status": FAILED, "finished_at": now, "updated_at": now, "last_error": error.as_doc()},
            "$unset": {"lease_expires_at": ""},
            "$push": {"errors": {"$each": [error.as_doc()], "$slice": -self.config.max_error_history}},
        }
        return self._fenced(job, update, FAILED, "fail")

    def release(self, job: ClaimedJob) -> bool:
        """Hand back a claimed job that never started: ``pending`` again, attempt not counted."""
        update = {
            "$set": {"status": PENDING, "updated_at": self.now()},
            "$inc": {"attempts": -1},
            "$unset": {"lease_expires_at": ""},
        }
        return self._fenced(job, update, PENDING, "release", uncancelled=True)

    def _fenced(
        self, job: ClaimedJob, update: Mapping[str, Any], target: str, op: str, *, uncancelled: bool = False
    ) -> bool:
        fence: dict[str, Any] = {"_id": job.id, "lease_token": job.token, "status": PROCESSING}
        if uncancelled:  # back to pending only if no cancel was requested; the caller then cancels
            fence["cancel_requested"] = {"$ne": True}

        def call() -> bool:
            if self.collection.update_one(fence, update).matched_count:
                return True
            # Nothing matched: either the lease is gone, or an earlier try (ours
            # or the driver's own retryable-write retry) applied the write and
            # only its reply was lost. The token stays on the document until the
            # next claim replaces it, so "our token and the target status"
            # means the write was ours.
            doc = self.collection.find_one({"_id": job.id}, {"status": 1, "lease_token": 1})
            return doc is not None and doc.get("lease_token") == job.token and doc.get("status") == target

        return self._retry(call, op)

    # -- lease recovery -----------------------------------------------------

    def expired_leases(self, limit: int = 100) -> list[dict[str, Any]]:
        """Processing jobs whose lease ran out (their worker crashed or froze)."""
        now = self.now()
        # Whole documents: there are few (only stranded jobs), and the sweep checks them for damage.
        return self._retry(
            lambda: list(self.collection.find({"status": PROCESSING, "lease_expires_at": {"$lt": now}}, limit=limit)),
            "expired_leases",
        )

    def recover(self, doc: Mapping[str, Any], error: ErrorRecord, give_up: bool) -> bool:
        """Requeue (or fail, when attempts are spent) one job whose lease expired.

        Fenced on the token *and* on the lease still being expired, so a
        heartbeat that lands first wins and a live job is never taken. A job
        whose cancellation was requested ends ``cancelled``; the fence makes
        sure a request that arrives after the sweep's read is not lost.
        """
        now = self.now()
        cancel = bool(doc.get("cancel_requested"))
        fence = {
            "_id": doc["_id"],
            "lease_token": doc.get("lease_token"),
            "status": PROCESSING,
            "lease_expires_at": {"$lt": now},
            "cancel_requested": True if cancel else {"$ne": True},
        }
        status = CANCELLED if cancel else FAILED if give_up else PENDING
        give_up = give_up or cancel
        # Unlike the owner's own writes, a rescue removes the token: the old
        # owner's late writes then match nothing *and* fail the "was it my
        # earlier try?" check in _fenced, so they are reported as lost.
        update: dict[str, Any] = {
            "$set": {"status": status, "updated_at": now, "last_error": error.as_doc()},
            "$unset": {"lease_expires_at": "", "lease_token": ""},
            "$push": {"errors": {"$each": [error.as_doc()], "$slice": -self.config.max_error_history}},
        }
        update["$set"]["finished_at" if give_up else "run_at"] = now
        return self._retry(lambda: self.collection.update_one(fence, update).matched_count == 1, "recover")


def _is_id_duplicate(exc: DuplicateKeyError) -> bool:
    details = exc.details or {}
    key = details.get("keyPattern") or {}
    return list(key) == ["_id"] or "_id_" in str(details.get("errmsg", exc))
