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
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import mongoengine.connection
import pymongo
from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
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
from .model import BaseJob, JobError, LeaseOwner, job_log_extra
from .records import ClaimedJob, UnstorableResult, completion_fields
from .status import CANCELLED, COMPLETED, FAILED, PENDING, PROCESSING
from .store_admin import AdminQueries
from .store_base import INDEX_BUILD_MS, MAINTENANCE_MAX_TIME_MS, as_stored
from .store_collection import is_prepared, prepared_collection
from .store_control import ControlQueries, Heartbeat
from .store_schedule import ScheduleQueries
from .validation import stored_job_problems

__all__ = ["ClaimedJob", "Heartbeat", "JobStore", "is_transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")


_MAX_QUARANTINES_PER_CLAIM = 10
# What a new claim clears: the progress an earlier attempt reported.
_FRESH_RUN = {"progress": ""}
# Bound on every read of the claim path (the claim's own search included).
_CLAIM_READ_MAX_TIME_MS = 5_000

#: ``hello`` round trips per clock measurement; the fastest one is used.
_CLOCK_SAMPLES = 3
#: A measurement whose fastest round trip took longer is not trusted (error up to half of it).
_MAX_CLOCK_ROUND_TRIP_S = 0.5

# Server error codes that mean "try again, maybe elsewhere" (replica-set state
# changes, shutdown, network). pymongo maps most to AutoReconnect/NotPrimaryError,
# but a failCommand or an old server can surface them as OperationFailure.
_TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


#: The clients that came across fork() into this process (MongoEngine's, and
#: those the live stores' models cached), by identity, recorded by the
#: after-fork hook; kept referenced so they are never finalised here.
_inherited_clients: list[Any] = []
#: The pid in which that hook last ran.
_hooked_pid: int | None = None
#: Without the hook (a fork from C code): what each process has dropped, by
#: ("alias", name) and ("model", class), with the pid that dropped it.
_forgotten_in: dict[tuple[str, Any], int] = {}
_fork_lock = threading.Lock()
_live_stores: weakref.WeakSet[JobStore] = weakref.WeakSet()


def _reset_after_fork() -> None:
    global _fork_lock, _hooked_pid
    _fork_lock = threading.Lock()
    _hooked_pid = os.getpid()
    _inherited_clients.extend(mongoengine.connection._connections.values())
    for store in list(_live_stores):
        cached = store.model._collection
        if cached is not None:
            _inherited_clients.append(cached.database.client)
        store._after_fork_in_child()


def _is_inherited(client: Any) -> bool:
    return any(client is inherited for inherited in _inherited_clients)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


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
        # In a forked child even a new store must check what it would inherit.
        self._pid: int | None = None if _hooked_pid == os.getpid() else os.getpid()
        self._offset = timedelta(0)
        self._next_sync = 0.0
        self._synced = False  # no time-based decision before the first measurement
        self._sync_lock = threading.Lock()
        self._monotonic: Callable[[], float] = time.monotonic  # measures round trips; tests inject one
        _live_stores.add(self)

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
        return prepared_collection(self.model)

    def _database(self) -> Database[dict[str, Any]]:
        """The model's database, reconnected in a forked child; unlike :attr:`collection` it builds no index."""
        if os.getpid() != self._pid:
            self._forget_inherited_client()
        db: Database[dict[str, Any]] = self.model._get_db()
        return db

    def _reach_server(self) -> None:
        """Select the server within ``db_timeout_ms``, before a step under a longer bound (an index build).

        Inside ``pymongo.timeout`` server selection waits for the whole
        remaining time, not ``serverSelectionTimeoutMS``: under the index
        build's minutes a server that is down would hold every try of the
        call that long, so a start would neither fail nor retry in time.
        A shorter ``serverSelectionTimeoutMS`` the app connected with is
        kept, as :meth:`bounded` keeps a shorter socket timeout.
        """
        bound = self.config.db_timeout_s
        try:
            bound = min(bound, self._database().client.options.server_selection_timeout)
        except Exception:  # noqa: BLE001 - no client yet: the config's bound, and the ping says why
            pass
        with self.bounded(), pymongo.timeout(bound):
            self._database().command("ping")

    def _forget_inherited_client(self) -> None:
        """Drop what the parent's client left behind in this process, and only that.

        Several stores (queues, models) share one alias: the second store in
        a child must not drop the client the first has just created there,
        which would leak it and its monitor threads. So what is dropped is
        the very client that came across fork(); where the after-fork hook
        did not run (a fork from C code), each alias and model is reset once
        per process instead.
        """
        alias = self.model._meta.get("db_alias") or mongoengine.DEFAULT_CONNECTION_NAME
        pid = os.getpid()
        with _fork_lock:
            if _hooked_pid == pid:
                if _is_inherited(mongoengine.connection._connections.get(alias)):
                    mongoengine.connection._connections.pop(alias, None)
                    mongoengine.connection._dbs.pop(alias, None)
                cached = self.model._collection
                if cached is not None and _is_inherited(cached.database.client):
                    self.model._collection = None
            else:
                if _forgotten_in.get(("alias", alias)) != pid:
                    mongoengine.connection._connections.pop(alias, None)
                    mongoengine.connection._dbs.pop(alias, None)
                    _forgotten_in[("alias", alias)] = pid
                if _forgotten_in.get(("model", self.model)) != pid:
                    self.model._collection = None  # holds the parent's client
                    _forgotten_in[("model", self.model)] = pid
            self._pid = pid

    def _after_fork_in_child(self) -> None:
        # A lock held by a parent thread at fork() stays held forever in the child.
        self._sync_lock = threading.Lock()

    def ensure_indexes(self) -> None:
        """Create and check the model's indexes now, and the retention TTL indexes; idempotent.

        The model's indexes are created anyway before the store's first use
        of the collection (see :mod:`.store_collection`); this does it again,
        e.g. after someone dropped an index by hand. An index build on a large
        existing collection takes longer than a query, hence the extra bound.
        """
        self._retry(lambda: prepared_collection(self.model, force=True), "ensure_indexes", extra_ms=INDEX_BUILD_MS)
        self.ensure_retention_indexes()

    def now(self) -> datetime:
        """The current time on the server's clock, as far as this process can tell.

        Every time the queue writes or compares (``run_at``, lease expiry) comes
        from here. With ``sync_clock`` the local clock is corrected by its
        offset from the server's, so all workers judge leases and due times
        by one clock, whatever their hosts' clocks say. Until the first
        measurement has completed every caller waits for it (and sees its
        error), so no decision is ever taken by the uncorrected clock.
        """
        if self.config.sync_clock:
            if not self._synced:
                with self._sync_lock:
                    if not self._synced:
                        self._measure_offset()
            elif self._monotonic() >= self._next_sync:
                self.sync_clock()
        return self.clock() + self._offset

    @property
    def clock_offset(self) -> timedelta:
        """Server time minus local time, as last measured."""
        return self._offset

    def sync_clock(self) -> None:
        """Measure the offset of the local clock from the server's ``hello.localTime`` again.

        Other threads keep using the current offset meanwhile; on failure it is
        kept too, and measured again at the next interval.
        """
        if not self._sync_lock.acquire(blocking=False):
            return  # another thread is measuring
        try:
            self._measure_offset()
        except Exception as exc:  # noqa: BLE001 - keep the last offset; retry at the next interval
            self.log.debug("clock sync skipped: %r", exc)
        finally:
            self._sync_lock.release()

    def _hello(self) -> Mapping[str, Any]:
        with self.bounded():  # the clock needs no collection: no index build under a query's bound
            return self._database().command("hello")

    def _measure_offset(self) -> None:
        """Take the best of a few ``hello`` samples (shortest round trip), rejecting slow ones; caller holds the lock.

        The server reads its clock somewhere during the round trip, so the
        midpoint's error is at most half of it: the fastest sample is the
        most accurate. Raises when no sample could be taken.
        """
        self._next_sync = self._monotonic() + self.config.clock_sync_interval_ms / 1000
        samples: list[tuple[float, timedelta]] = []
        for _ in range(_CLOCK_SAMPLES):
            try:
                started = self._monotonic()
                before = self.clock()
                reply = self._hello()
                after = self.clock()
                round_trip = self._monotonic() - started
            except Exception as exc:
                if samples:
                    break  # use what was measured
                if is_transient(exc) or getattr(exc, "timeout", False):
                    raise  # the server may answer soon: measure before deciding anything
                # Refused for good (a mock without hello, no permission): it never will.
                self.log.warning("cannot measure the clock offset (%r); queue times are this host's clock", exc)
                self._synced = True
                return
            server = reply.get("localTime")
            if not isinstance(server, datetime):
                self._synced = True  # the server does not tell its time: nothing to correct by
                return
            samples.append((round_trip, to_naive_utc(server) - (before + (after - before) / 2)))
        round_trip, offset = min(samples, key=lambda sample: sample[0])
        if round_trip > _MAX_CLOCK_ROUND_TRIP_S:
            if self._synced:
                self.log.debug("clock sync skipped: fastest of %d round trips took %.3f s", len(samples), round_trip)
                return
            self.log.warning(
                "clock offset measured over a slow round trip (%.3f s): queue times may be off by up to %.3f s",
                round_trip,
                round_trip / 2,
            )
        if abs(offset - self._offset) > timedelta(seconds=1):
            self.log.warning(
                "this host's clock is %.1f s %s the database server's; correcting queue times by it",
                abs(offset.total_seconds()),
                "behind" if offset > timedelta(0) else "ahead of",
            )
        self._offset = offset
        self._synced = True

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
            options = self._database().client.options  # no I/O: the collection would build indexes, unbounded
            for own in (options.timeout, options.pool_options.socket_timeout):
                if own:
                    bound = min(bound, own)
        except Exception:  # noqa: BLE001 - no client yet: the config's bound, and the call says why
            pass
        return pymongo.timeout(bound + extra_ms / 1000)

    def _retry(self, fn: Callable[[], T], op: str, abort: threading.Event | None = None, *, extra_ms: int = 0) -> T:
        """Run ``fn`` with each try time-bounded (:meth:`bounded`); retry transient errors and timeouts."""

        def bounded_try() -> T:
            if extra_ms or not is_prepared(self.model):
                self._reach_server()  # a long bound is for the work, never for server selection
            if not is_prepared(self.model):
                # The first use in this process builds the indexes, which on a
                # large existing collection takes longer than any query.
                with self.bounded(INDEX_BUILD_MS):
                    self.collection  # noqa: B018 - the property prepares the collection
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
                if is_transient(exc):
                    # Only write-concern errors: the jobs are in, the reply could not
                    # confirm replication. Retry; the retry inserts only missing _ids.
                    raise
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
        owner: LeaseOwner,
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
        owner: LeaseOwner,
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
                batch, raced = self._claim_batch(query, owner, limit, abort)
            except OperationFailure as exc:
                if is_transient(exc) or not self._quarantine_head(query, exc, limit):
                    raise
                continue
            if batch or not raced:
                return batch
            # Other workers took every job we read: that is not an empty queue.
            # One atomic claim either takes the next due job or proves none is left.
            one = self._claim(query, owner, abort)
            return [one] if one is not None else []
        return []

    def _claim_batch(
        self, query: dict[str, Any], owner: LeaseOwner, limit: int, abort: threading.Event | None
    ) -> tuple[list[ClaimedJob], bool]:
        """Claim up to ``limit`` jobs; also whether jobs were read but all taken by others (a lost race).

        ``update_many`` is not atomic: an error partway (a document edited
        into a shape the update cannot apply to, or transient errors that
        outlast the retries) can leave some documents leased under our token.
        Whatever the error, those are read back and returned, so none is
        stranded holding a lease nobody renews; the error is raised only when
        nothing was claimed.
        """
        token = uuid.uuid4().hex
        tries = 0
        expires: datetime | None = None
        raced = False

        def mine() -> list[dict[str, Any]]:
            return list(
                self.collection.find(
                    {"status": PROCESSING, "lease_expires_at": expires, "lease_token": token},
                    limit=limit,
                    max_time_ms=_CLAIM_READ_MAX_TIME_MS,
                )
            )

        def call() -> list[dict[str, Any]]:
            nonlocal tries, expires, raced
            tries += 1
            if tries > 1 and expires is not None:
                claimed = mine()  # an earlier try may have applied before its reply was lost
                if claimed:
                    return claimed
            now = self.now()
            due = {**query, "run_at": {"$lte": now}}
            candidates = list(
                self.collection.find(
                    due, sort=[("priority", -1), ("run_at", 1)], limit=limit, max_time_ms=_CLAIM_READ_MAX_TIME_MS
                )
            )
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
            result = self.collection.update_many(
                {**due, "$or": unchanged}, {"$set": lease, "$inc": {"attempts": 1}, "$unset": _FRESH_RUN}
            )
            if result.modified_count == len(candidates):
                for doc in candidates:
                    doc.update(lease)
                    doc["attempts"] = int(doc.get("attempts") or 0) + 1
                    doc.pop("progress", None)
                return candidates
            raced = not result.modified_count
            return mine() if result.modified_count else []

        try:
            docs = self._retry(call, "claim_batch", abort)
        except Exception as exc:
            if expires is None:
                raise
            try:
                docs = self._retry(mine, "claim_batch_read_back")
            except Exception:  # noqa: BLE001 - report the claim's own error; lease expiry recovers the rest
                raise exc from None
            if not docs:
                raise
            self.log.warning("claim of %d job(s) partly applied before %r; running those", len(docs), exc)
        return [ClaimedJob(doc, token) for doc in docs], raced

    def claim_job(self, job_id: ObjectId, owner: LeaseOwner) -> ClaimedJob | None:
        """Claim one specific pending job, due or not (inline/eager runs, admin "run now")."""
        return self._claim({"_id": job_id, "status": PENDING}, owner, None, due_only=False)

    def _claim(
        self,
        query: dict[str, Any],
        owner: LeaseOwner,
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
                    {"status": PROCESSING, "lease_expires_at": expires, "lease_token": token},
                    max_time_ms=_CLAIM_READ_MAX_TIME_MS,
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
                    "$unset": _FRESH_RUN,
                },
                sort=[("priority", -1), ("run_at", 1)],
                return_document=ReturnDocument.AFTER,
                maxTimeMS=_CLAIM_READ_MAX_TIME_MS,
            )

        doc = self._retry(call, "claim", abort)
        return ClaimedJob(doc, token) if doc is not None else None

    def _quarantine_head(self, query: dict[str, Any], exc: OperationFailure, limit: int = 1) -> bool:
        """Fail the malformed documents among the ``limit`` most urgent due jobs; True if any was."""
        head = self._retry(
            lambda: list(
                self.collection.find(
                    {**query, "run_at": {"$lte": self.now()}},
                    sort=[("priority", -1), ("run_at", 1)],
                    limit=max(1, limit),
                    max_time_ms=_CLAIM_READ_MAX_TIME_MS,
                )
            ),
            "claim_head",
        )
        failed = False
        for doc in head:
            problems = stored_job_problems(doc)
            if problems:
                self.log.error("claim failed on a malformed job %s (%s); failing it", doc["_id"], exc)
                failed = self.quarantine(doc["_id"], problems, from_status=PENDING) or failed
        return failed

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

        def write(result: Any) -> bool:
            update: dict[str, Any] = {
                "$set": {"status": COMPLETED, "finished_at": now, "updated_at": now},
                "$unset": {"lease_expires_at": ""},
            }
            update["$set"].update(completion_fields(result))
            return self._fenced(job, update, COMPLETED, "complete")

        return self._complete_dropping_result_if_too_large(job, result, write)

    def _complete_dropping_result_if_too_large(
        self, job: ClaimedJob, result: Any, write: Callable[[Any], bool]
    ) -> bool:
        """``write(result)``; if the document would grow past 16 MiB, ``write`` again without the result.

        The handler did finish: a result too large for what is left of its
        document (a big payload enqueued under other limits) is recorded as
        dropped, in ``result_error``, and the job completes. Without this the
        refused write would leave the job ``processing`` and run it again.
        """
        try:
            return write(result)
        except (DocumentTooLarge, OperationFailure) as exc:
            if result is None or isinstance(result, UnstorableResult) or not is_too_large(exc):
                raise
            message = _short_error(exc)
            self.log.warning(
                "completion of job %s refused as too large (%s); completing it without its result",
                job.id,
                message,
                extra=job_log_extra(job.doc),
            )
            reason = f"not stored: the job document with it would exceed MongoDB's 16 MiB limit ({message})"
            return write(UnstorableResult(reason[: self.config.max_error_chars]))

    def complete_many(self, jobs: Sequence[tuple[ClaimedJob, Any]]) -> set[tuple[ObjectId, str]]:
        """Mark many claimed jobs completed in one bulk write; return the runs ``(id, token)`` whose write landed.

        Each update carries its own fence (``_id``, token, ``processing``), so
        a lost lease fails only its own job. When fewer matched than sent, the
        runs whose job is completed under their token (by this try or an
        earlier one whose reply was lost) count as written; the others lost
        their lease. Runs, not job ids: two runs of one job (a stale one and
        a newer claim) can share a batch, and only the newer one's write lands.
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
        runs = {(job.id, job.token) for job, _ in jobs}

        def call() -> set[tuple[ObjectId, str]]:
            try:
                if self.collection.bulk_write(ops, ordered=False).matched_count == len(ops):
                    return set(runs)
            except BulkWriteError:
                pass  # some writes were rejected; find out which below
            ids = list({job_id for job_id, _ in runs})
            return {
                (d["_id"], str(d.get("lease_token")))
                for d in self.collection.find({"_id": {"$in": ids}}, {"status": 1, "lease_token": 1})
                if d.get("status") == COMPLETED
            } & runs

        return self._retry(call, "complete_many")

    def reschedule(self, job: ClaimedJob, run_at: datetime, error: JobError) -> bool:
        """Return a failed attempt to ``pending`` at ``run_at``; False if the lease is lost or a cancel requested."""
        update = {
            "$set": {"status": PENDING, "run_at": run_at, "updated_at": self.now(), "last_error": error.as_doc()},
            "$unset": {"lease_expires_at": ""},
            "$push": {"errors": {"$each": [error.as_doc()], "$slice": -self.config.max_error_history}},
        }
        return self._fenced(job, update, PENDING, "reschedule", uncancelled=True)

    def fail(self, job: ClaimedJob, error: JobError) -> bool:
        """Fail a claimed job for good; False if the lease was lost or a cancel requested."""
        now = self.now()
        update = {
            "$set": {"status": FAILED, "finished_at": now, "updated_at": now, "last_error": error.as_doc()},
            "$unset": {"lease_expires_at": ""},
            "$push": {"errors": {"$each": [error.as_doc()], "$slice": -self.config.max_error_history}},
        }
        # Fenced on the cancel request too, like reschedule: a job whose
        # cancellation was requested ends cancelled (the caller cancels it).
        return self._fenced(job, update, FAILED, "fail", uncancelled=True)

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
        query = {"status": PROCESSING, "lease_expires_at": {"$lt": now}}
        # Whole documents: there are few (only stranded jobs), and the sweep checks them for damage.
        # The lease index answers it; the limit and maxTimeMS bound it, so a sweep never stalls its thread.
        return self._retry(
            lambda: list(
                self.collection.find(query, limit=limit, max_time_ms=MAINTENANCE_MAX_TIME_MS).hint("mjq_lease")
            ),
            "expired_leases",
        )

    def recover(self, doc: Mapping[str, Any], error: JobError, give_up: bool) -> bool:
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
        record = error.as_doc()
        record["at"] = as_stored(error.at)

        def call() -> bool:
            if self.collection.update_one(fence, update).matched_count:
                return True
            # Nothing matched: renewed or recovered by someone else, or an earlier
            # try of ours applied and only its reply was lost. Ours pushed this
            # very record (the old token, our time) into the job's errors.
            found = self.collection.find_one({"_id": doc["_id"]}, {"errors": 1})
            return found is not None and any(e == record for e in found.get("errors") or [])

        return self._retry(call, "recover")


#: Server codes for "the document would be too large": BSONObjectTooLarge, and
#: the update's "Resulting document after update is larger than 16 MiB".
_TOO_LARGE_CODES = frozenset({10334, 17419})


def is_too_large(exc: BaseException) -> bool:
    """True for a write that the driver or the server refused because a document would exceed 16 MiB."""
    if isinstance(exc, DocumentTooLarge):
        return True
    if isinstance(exc, OperationFailure):
        details = exc.details or {}
        return exc.code in _TOO_LARGE_CODES or details.get("codeName") == "BSONObjectTooLarge"
    return False


def _short_error(exc: BaseException) -> str:
    # str() of a WriteError carries the full reply, the refused update included.
    details = getattr(exc, "details", None) or {}
    return str(details.get("errmsg") or exc)[:500]


def _is_id_duplicate(exc: DuplicateKeyError) -> bool:
    details = exc.details or {}
    key = details.get("keyPattern") or {}
    return list(key) == ["_id"] or "_id_" in str(details.get("errmsg", exc))
