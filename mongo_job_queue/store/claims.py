"""The claim: atomically lease the most urgent due jobs to a worker, and hear about new ones.

A claim sets the job ``processing`` under a new ``lease_token`` (the
lease, :func:`_lease`, built in one place for both claim paths). A retried
claim first looks for the job its earlier try may have leased, by that
token, so a lost reply never leases two jobs for one claim. An earlier
try's write may still apply after that look (or after the call gave up):
a call that had a try with an unknown outcome leaves its token to
:class:`.strays.StrayClaims`, which finds such jobs for the worker's
maintenance thread to hand back.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure

from ..bounded import BoundedChangeStream
from ..clock import after_ms
from ..model import LeaseOwner
from ..status import PENDING, PROCESSING
from ..validation import stored_job_problems
from .faults import is_transient
from .handle import JobStore
from .leases import ClaimedJob
from .limited_claims import LimitedClaims
from .limiter import Limiter
from .recovery import Recovery
from .strays import StrayClaims

__all__ = ["Claims", "claim_update", "lease_fields"]

_MAX_QUARANTINES_PER_CLAIM = 10
# What a new claim clears: the progress an earlier attempt reported, and the rates' starts it held (spent or
# not, they are its last claim's: a claim that admits nothing, its limits gone, must not leave them to the next).
_FRESH_RUN = {"progress": "", "rate_slots": ""}
# Bound on every read of the claim path (the claim's own search included).
_CLAIM_READ_MAX_TIME_MS = 5_000
# The claim order: most urgent first (the claim index serves it).
_URGENT_FIRST = [("priority", -1), ("run_at", 1)]


def _lease(token: str, owner: LeaseOwner, now: datetime, lease_ms: int) -> dict[str, Any]:
    """The fields a claim sets: the job is ``processing`` under ``token``, leased to ``owner`` until now + lease."""
    return {
        "status": PROCESSING,
        "lease_token": token,
        "lease_owner": owner.as_doc(),
        "lease_expires_at": after_ms(now, lease_ms),
        "started_at": now,
        "updated_at": now,
    }


def _partition(key: str, head: Mapping[str, Any]) -> dict[str, Any]:
    """The condition of a chunk's partition: the jobs whose ``key`` value equals the head job's.

    ``$eq``, so a stored value is never read as a query (an operator document
    or a regex), and arrays excluded, since Mongo's equality also matches an
    array holding the value. An array value has no such equality (it matches
    arrays nested in arrays too), so a job whose value is one runs alone.
    """
    value = head.get(key)
    if isinstance(value, list):
        return {"_id": head["_id"]}
    return {key: {"$eq": value, "$not": {"$type": "array"}}}


def _leased(doc: dict[str, Any], lease: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` as read before the claim, as the claim's update left it (no need to read it again); a copy."""
    leased = {**doc, **lease, "attempts": int(doc.get("attempts") or 0) + 1}
    for field in _FRESH_RUN:
        leased.pop(field, None)
    return leased


def _claim_update(lease: Mapping[str, Any]) -> dict[str, Any]:
    """The update of a claim with ``lease``: one more attempt, and the earlier attempt's progress cleared."""
    return {"$set": dict(lease), "$inc": {"attempts": 1}, "$unset": _FRESH_RUN}


class Claims:
    """Claims due jobs, one or a batch, failing (quarantining) a malformed one at the head of the queue."""

    def __init__(self, store: JobStore, recovery: Recovery, limiter: Limiter) -> None:
        self._store = store
        self._recovery = recovery
        self._limiter = limiter
        #: The tokens of claims whose reply was lost, and the jobs their late writes leased.
        self.strays = StrayClaims(store)
        self._limited = LimitedClaims(store, limiter, self.strays)

    def _admitting(
        self, query: dict[str, Any], owner: LeaseOwner, want: int, abort: threading.Event | None, due_only: bool = True
    ) -> list[ClaimedJob] | None:
        """The claim under limits (limited_claims.py) when any limit is in use; None: claim as usual."""
        limits = self._limiter.active()
        if not limits:
            return None
        return self._limited.claim(query, owner, limits, want, abort, due_only=due_only)

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
                limited = self._admitting(query, owner, 1, abort)
                if limited is not None:
                    return limited[0] if limited else None
                return self._claim(self._limiter.unlimited(query), owner, abort)
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
        where: Mapping[str, Any] | None = None,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs in two round trips (three under contention).

        The same guarantees as :meth:`claim`, for k jobs at once: read the k
        most urgent due jobs, then lease them with one ``update_many`` that
        matches each only if no one touched it since the read (its
        ``lease_token`` and ``attempts`` are unchanged, and it is still pending
        and due). All k share one new token, which with ``_id`` still fences
        every later write per job. If another worker took some in between,
        the jobs that are ours are read back by that token. ``where`` adds
        equality conditions (a chunk's key value, see :meth:`peek_due`).
        """
        if limit <= 1 and not where:
            one = self.claim(types, queues, owner, abort=abort)
            return [one] if one is not None else []
        types, queues = list(types), list(queues)
        if not types or not queues:
            return []
        query: dict[str, Any] = {"status": PENDING, "queue": {"$in": queues}, "type": {"$in": types}}
        if where:
            # Beside the claim's own conditions, never merged into them: a key such as ``queue`` must not
            # overwrite the claim's ``queue`` (or ``run_at``) condition, nor be overwritten by it.
            query["$and"] = [dict(where)]
        for _ in range(_MAX_QUARANTINES_PER_CLAIM):
            try:
                limited = self._admitting(query, owner, limit, abort)
                if limited is not None:
                    return limited
                batch, raced = self._claim_batch(self._limiter.unlimited(query), owner, limit, abort)
            except OperationFailure as exc:
                if is_transient(exc) or not self._quarantine_head(query, exc, limit):
                    raise
                continue
            if batch or not raced:
                return batch
            # Other workers took every job we read: that is not an empty queue.
            # One atomic claim either takes the next due job or proves none is left.
            one = self._claim(self._limiter.unlimited(query), owner, abort)
            return [one] if one is not None else []
        return []

    def peek_due(
        self, types: Sequence[str], queues: Sequence[str], limit: int, *, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """How many jobs (up to ``limit``) a :meth:`claim_batch` of these would take now, and its ``where``.

        With ``key`` (a chunk's partition field), only jobs sharing the most
        urgent due job's value count, and ``where`` selects that value: two
        reads whatever the number of jobs, none of them claimed. The value
        is matched by ``$eq`` (a stored operator document or regex is a
        value, not a query) and a scalar never matches an array holding it;
        a job whose value is an array runs alone (``where`` names it, and its
        chunk counts as full: no other job can join it).
        """
        store = self._store
        query: dict[str, Any] = {"status": PENDING, "queue": {"$in": list(queues)}, "type": {"$in": list(types)}}
        where: dict[str, Any] = {}

        def call() -> int:
            due = {**query, "run_at": {"$lte": store.now()}}
            if key is not None:
                head = store.collection.find_one(due, {key: 1}, sort=_URGENT_FIRST, max_time_ms=_CLAIM_READ_MAX_TIME_MS)
                if head is None:
                    return 0
                where.clear()
                where.update(_partition(key, head))
                if "_id" in where:
                    return limit
                due["$and"] = [dict(where)]
            return store.collection.count_documents(due, limit=limit, maxTimeMS=_CLAIM_READ_MAX_TIME_MS)

        count = store.retry(call, "peek_due") if types and queues else 0
        return count, where

    def claim_job(self, job_id: ObjectId, owner: LeaseOwner) -> ClaimedJob | None:
        """Claim one specific pending job, due or not (inline/eager runs, admin "run now"); admitted by its limits."""
        query: dict[str, Any] = {"_id": job_id, "status": PENDING}
        limited = self._admitting(query, owner, 1, None, due_only=False)
        if limited is not None:
            return limited[0] if limited else None
        return self._claim(self._limiter.unlimited(query), owner, None, due_only=False)

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
        store = self._store
        token = uuid.uuid4().hex
        tries = 0
        expires: datetime | None = None
        sent: list[datetime] = []  # each try's lease expiry, set by its write if it applied
        raced = False
        # The last read's candidates and the lease written over them: what a read-back patches.
        read: list[dict[str, Any]] = []
        lease: dict[str, Any] = {}

        def mine() -> list[dict[str, Any]]:
            """The candidates our token leased, found by ``_id`` alone: their payloads were read once, already."""
            ours = {
                d["_id"]
                for d in store.collection.find(
                    {"status": PROCESSING, "lease_expires_at": expires, "lease_token": token},
                    {"_id": 1},
                    limit=limit,
                    max_time_ms=_CLAIM_READ_MAX_TIME_MS,
                )
            }
            return [_leased(doc, lease) for doc in read if doc["_id"] in ours]

        def call() -> list[dict[str, Any]]:
            nonlocal tries, expires, raced, read, lease
            tries += 1
            if tries > 1 and expires is not None:
                claimed = mine()  # an earlier try may have applied before its reply was lost
                if claimed:
                    return claimed
            due = {**query, "run_at": {"$lte": store.now()}}
            candidates = list(
                store.collection.find(due, sort=_URGENT_FIRST, limit=limit, max_time_ms=_CLAIM_READ_MAX_TIME_MS)
            )
            if not candidates:
                return []
            # The lease starts when it is written, not when the read began: on a
            # busy server the read alone can take a good part of a short lease.
            read, lease = candidates, _lease(token, owner, store.now(), store.config.lease_ms)
            expires = lease["lease_expires_at"]
            sent.append(expires)
            # Each claim changes lease_token or attempts, so an unchanged pair
            # means nobody claimed the job since we read it: the read is still
            # its state, and patching it locally saves reading it back.
            unchanged = [
                {"_id": d["_id"], "lease_token": d.get("lease_token"), "attempts": d.get("attempts")}
                for d in candidates
            ]
            result = store.collection.update_many({**due, "$or": unchanged}, _claim_update(lease))
            if result.modified_count == len(candidates):
                return [_leased(doc, lease) for doc in candidates]
            raced = not result.modified_count
            return mine() if result.modified_count else []

        try:
            docs = store.retry(call, "claim_batch", abort)
        except Exception as exc:
            if expires is None:
                raise
            try:
                docs = store.retry(mine, "claim_batch_read_back")
            except Exception:  # noqa: BLE001 - report the claim's own error; the strays are handed back
                self.strays.watch(token, sent, ())
                raise exc from None
            self.strays.watch(token, sent, docs)  # a late write may lease more under the token
            if not docs:
                raise
            store.log.warning("claim of %d job(s) partly applied before %r; running those", len(docs), exc)
        else:
            if tries > 1:  # an earlier try's write may apply yet
                self.strays.watch(token, sent, docs)
        return [ClaimedJob(doc, token, key=store.shard_key.of(doc)) for doc in docs], raced

    def _claim(
        self,
        query: dict[str, Any],
        owner: LeaseOwner,
        abort: threading.Event | None,
        *,
        due_only: bool = True,
    ) -> ClaimedJob | None:
        store = self._store
        token = uuid.uuid4().hex
        tries = 0
        expires: datetime | None = None
        sent: list[datetime] = []  # each try's lease expiry, set by its write if it applied

        def call() -> dict[str, Any] | None:
            nonlocal tries, expires
            tries += 1
            if tries > 1 and expires is not None:
                # The earlier try may have claimed a job before its reply was
                # lost; find it by our token (index: status, lease_expires_at).
                mine = store.collection.find_one(
                    {"status": PROCESSING, "lease_expires_at": expires, "lease_token": token},
                    max_time_ms=_CLAIM_READ_MAX_TIME_MS,
                )
                if mine is not None:
                    return mine
            now = store.now()
            lease = _lease(token, owner, now, store.config.lease_ms)
            expires = lease["lease_expires_at"]
            sent.append(expires)
            return store.collection.find_one_and_update(
                {**query, "run_at": {"$lte": now}} if due_only else query,
                _claim_update(lease),
                sort=_URGENT_FIRST,
                return_document=ReturnDocument.AFTER,
                maxTimeMS=_CLAIM_READ_MAX_TIME_MS,
            )

        try:
            doc = store.retry(call, "claim", abort)
        except Exception as exc:
            if tries > 1 or is_transient(exc):
                self.strays.watch(token, sent, ())  # a try's write may apply yet, leasing a job nobody runs
            raise
        if tries > 1:
            self.strays.watch(token, sent, [doc] if doc is not None else [])
        return ClaimedJob(doc, token, key=store.shard_key.of(doc)) if doc is not None else None

    def _quarantine_head(self, query: dict[str, Any], exc: OperationFailure, limit: int = 1) -> bool:
        """Fail the malformed documents among the ``limit`` most urgent due jobs; True if any was."""
        store = self._store
        head = store.retry(
            lambda: list(
                store.collection.find(
                    {**query, "run_at": {"$lte": store.now()}},
                    sort=_URGENT_FIRST,
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
                store.log.error("claim failed on a malformed job %s (%s); failing it", doc["_id"], exc)
                failed = self._recovery.quarantine(doc["_id"], problems, from_status=PENDING) or failed
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
        store = self._store
        with store.bounded():
            stream = store.collection.watch(
                [{"$match": match}], resume_after=resume_after, max_await_time_ms=max_await_ms
            )
        # Each read waits up to max_await_ms on the server, plus the usual bound.
        return BoundedChangeStream(stream, store.bounded, max_await_ms)


#: The lease fields, the update of a claim and the claimed document, for the claim under limits (limited_claims.py).
lease_fields = _lease
claim_update = _claim_update
leased = _leased
