"""``store.admin``: queries for operators and the hygiene sweep: stats, purge, retry, find, malformed documents.

The job listings of the command line (by filter, newest first) are in :mod:`.listing`.

Nothing here runs on the claim or acknowledgement path (the claim path's
quarantine of a malformed document is an outcome, in :mod:`.outcomes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Optional

import pymongo
from bson import ObjectId
from pymongo.errors import PyMongoError

from ..status import ALL_STATUSES, BLOCKED, CANCELLED, FAILED, FINISHED, PENDING, PROCESSING
from .control import Control
from .handle import MAINTENANCE_MAX_TIME_MS, JobStore
from .marks import KEPT_MARKS, as_stored, new_mark

__all__ = ["Admin"]

#: The claim index (see :class:`~mongo_job_queue.BaseJob`): status, queue, type, -priority, run_at.
CLAIM_INDEX = "mjq_claim"


class Admin:
    """Queries for operators and the hygiene sweep; ``has_due`` reads the pause state through ``control``."""

    def __init__(self, store: JobStore, control: Control) -> None:
        self._store = store
        self._control = control

    def write_concern_problem(self) -> str | None:
        """Why the jobs collection's write concern risks double runs, or None.

        On a replica set, a claim or a completion acknowledged by the primary
        alone (``w`` 0 or 1) can be rolled back by a failover: the job then
        runs again although it was claimed or finished. ``majority`` is safe.
        """
        hello = self._store.retry(lambda: self._store.collection.database.command("hello"), "hello")
        if not hello.get("setName") and hello.get("msg") != "isdbgrid":
            return None  # a standalone server has no failover to roll writes back
        w = self._store.collection.write_concern.document.get("w")
        if w is None:  # not set by the client: the cluster-wide default applies
            try:
                with self._store.bounded():
                    defaults = self._store.collection.database.client.admin.command("getDefaultRWConcern")
            except PyMongoError:
                return None  # cannot tell; MongoDB 5.0+ defaults to majority
            w = (defaults.get("defaultWriteConcern") or {}).get("w")
        if w in (0, 1):
            return (
                f"the jobs collection of {self._store.model.__name__} is written with w={w} on a replica set: "
                "a failover can roll back claims and completions and run jobs twice. "
                "Connect with w='majority' (the server default since MongoDB 5.0)."
            )
        return None

    def malformed_jobs(self, limit: int = 100, max_time_ms: int = MAINTENANCE_MAX_TIME_MS) -> list[dict[str, Any]]:
        """Stored jobs no claim or release can take: unknown status, ill-typed claim key or dependency fields.

        Only what the claim cannot see: a ``pending`` job whose ``queue`` or
        ``type`` is not a string, or whose ``run_at`` is not a date, never
        matches a claim's filter and would wait forever. Every other damage
        (``attempts``, ``max_retries``, ``priority``, ``data``) is found when
        the job is claimed, by the same :func:`~.validation.stored_job_problems`
        that judges these. All of these fields are keys of the claim index, so
        these queries are answered from it (hinted), with a limit and
        ``maxTimeMS``: never a read of the backlog's documents. A ``blocked``
        job with a damaged ``depends_on``, ``dependency_policies`` or
        ``dependency_outcomes`` is never released: the third query reads
        blocked jobs only (the index narrows to them).
        """
        statuses = list(ALL_STATUSES)
        invisible = [
            {"queue": {"$not": {"$type": "string"}}},
            {"type": {"$not": {"$type": "string"}}},
            {"run_at": {"$not": {"$type": "date"}}},
        ]
        # A blocked job whose dependency fields are damaged is never released (blocked jobs are few).
        unreleasable = [
            {"depends_on": {"$not": {"$type": "array"}}},
            {"dependency_policies": {"$exists": True, "$not": {"$type": "object"}}},
            {"dependency_outcomes": {"$exists": True, "$not": {"$type": "object"}}},
        ]
        queries = (
            {"status": {"$nin": statuses}},
            {"status": PENDING, "$or": invisible},
            {"status": BLOCKED, "$or": unreleasable},
        )

        def call() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            for query in queries:
                found += self._store.collection.find(query, limit=limit, max_time_ms=max_time_ms).hint(CLAIM_INDEX)
            return found

        return self._store.retry(call, "malformed_jobs")

    def retry_job(self, job_id: ObjectId) -> bool:
        """Queue a failed or cancelled job again, due now, with a fresh attempt budget.

        Each try stamps the job with this call's mark, and a retried try first
        looks for it: an earlier try whose reply was lost has applied, and the
        job may since have been claimed, run and failed again (then the update
        would match once more and run it twice), or rescheduled.
        """
        mark = new_mark()
        filt = {"_id": job_id, "status": {"$in": [FAILED, CANCELLED]}}
        tries = 0

        def call() -> bool:
            nonlocal tries
            tries += 1
            jobs = self._store.collection
            if tries > 1 and jobs.find_one({"_id": job_id, "admin_marks": mark}, {"_id": 1}) is not None:
                return True
            for which, update in self._retry_updates(mark):
                target = {**filt, **which}
                keyed = self._store.shard_key.scope(target, jobs)
                if jobs.update_one(keyed, update).matched_count:
                    return True
                # The app may have changed the job's key values since they were read: by _id alone (every shard).
                if keyed is not target and jobs.update_one(target, update).matched_count:
                    return True
            return False

        retried = self._store.retry(call, "retry_job")
        if retried:
            self._store.dependencies.recheck([job_id])
        return retried

    def retry_jobs(
        self,
        job_ids: Sequence[ObjectId],
        *,
        matching: Optional[Mapping[str, Any]] = None,
        unchanged_since: Optional[datetime] = None,
    ) -> int:
        """Queue these jobs again as :meth:`retry_job` does each, those still failed or cancelled; how many were.

        Exactly this set, never a filter read again: the caller confirmed it.
        With ``matching`` (the filter they were counted by) and
        ``unchanged_since`` (when they were counted), a job that no longer
        matches, or changed since (retried by someone else and failed
        again), is left alone: the answer was about the jobs as counted.
        One ``update_many`` by ``_id`` per target status (``pending``, or
        ``blocked`` for a job with dependencies); each job it retries records this
        call's mark, so a retried try (its reply lost) skips the ones done
        and counts them by the mark, whatever they went through since.
        """
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return 0
        mark = new_mark()
        filt: dict[str, Any] = {"status": {"$in": [FAILED, CANCELLED]}, **(matching or {})}
        filt.update({"_id": {"$in": ids}, "admin_marks": {"$ne": mark}})
        if filt["status"] != {"$in": [FAILED, CANCELLED]}:
            filt["$and"] = [{"status": {"$in": [FAILED, CANCELLED]}}]  # a caller's filter never widens it
        if unchanged_since is not None:
            filt["updated_at"] = {"$lte": unchanged_since}

        def call() -> int:
            jobs = self._store.collection
            for which, update in self._retry_updates(mark):
                jobs.update_many({**filt, **which}, update)
            return int(jobs.count_documents({"_id": {"$in": ids}, "admin_marks": mark}))

        retried = self._store.retry(call, "retry_jobs")
        blocked = self._store.retry(
            lambda: [
                d["_id"]
                for d in self._store.collection.find(
                    {"_id": {"$in": ids}, "admin_marks": mark, "status": BLOCKED}, {"_id": 1}
                )
            ],
            "retry_jobs",
        )
        if blocked:
            self._store.dependencies.recheck(blocked)
        return retried

    def _retry_updates(self, mark: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """A retry's updates, each with the filter of its jobs: due now, a fresh attempt budget, ``mark`` recorded.

        A job with dependencies goes back to ``blocked``, and the re-check
        after the retry releases it (or cancels it again, under ``cancel``)
        by its dependencies as they are: it never runs before them.
        """
        now = as_stored(self._store.now())

        def update(status: str) -> dict[str, Any]:
            return {
                "$set": {"status": status, "run_at": now, "attempts": 0, "updated_at": now},
                # rate_slots: a start a rate reserved before a cancel is at the old run_at, not now.
                "$unset": {"finished_at": "", "lease_expires_at": "", "cancel_requested": "", "rate_slots": ""},
                "$push": {"admin_marks": {"$each": [mark], "$slice": -KEPT_MARKS}},
            }

        return [
            ({"depends_on.0": {"$exists": False}}, update(PENDING)),
            ({"depends_on.0": {"$exists": True}}, update(BLOCKED)),
        ]

    def purge(self, finished_before: datetime, statuses: Sequence[str] = FINISHED) -> int:
        """Delete finished jobs whose ``finished_at`` is older than ``finished_before``."""
        unknown = set(statuses) - set(FINISHED)
        if unknown:
            raise ValueError(f"only finished jobs can be purged, not {sorted(unknown)}")
        filt: dict[str, Any] = {"status": {"$in": list(statuses)}, "finished_at": {"$lt": finished_before}}
        held = self._store.dependencies.held()  # ended jobs whose outcome a blocked dependent has not copied yet
        if held:
            filt["_id"] = {"$nin": held}
        return self._store.retry(lambda: self._store.collection.delete_many(filt).deleted_count, "purge")

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: job counts by status, and the age of the oldest due pending job.

        The counts are one aggregation, so a job that finishes while they are
        read is counted once, not as both processing and completed. It is a
        covered scan of the claim index (status, queue), reading no document;
        the oldest due job is a second one over due pending jobs only.
        """

        def call() -> dict[str, dict[str, Any]]:
            now = self._store.now()
            statuses = list(ALL_STATUSES)
            counted = self._store.collection.aggregate(
                [
                    {"$match": {"status": {"$in": statuses}}},
                    {"$project": {"_id": 0, "status": 1, "queue": 1}},
                    {"$group": {"_id": {"status": "$status", "queue": "$queue"}, "n": {"$sum": 1}}},
                ],
                hint=CLAIM_INDEX,
            )
            stats: dict[str, dict[str, Any]] = {}
            for row in counted:
                entry = stats.setdefault(str(row["_id"]["queue"]), {"counts": dict.fromkeys(statuses, 0)})
                entry["counts"][row["_id"]["status"]] = row["n"]
            oldest = {
                str(row["_id"]): row["oldest"]
                for row in self._store.collection.aggregate(
                    [
                        {"$match": {"status": PENDING, "run_at": {"$lte": now}}},
                        {"$project": {"_id": 0, "queue": 1, "run_at": 1}},
                        {"$group": {"_id": "$queue", "oldest": {"$min": "$run_at"}}},
                    ],
                    hint=CLAIM_INDEX,
                )
            }
            for queue, entry in stats.items():
                first = oldest.get(queue)
                entry["oldest_due_age_s"] = (now - first).total_seconds() if first else None
            return stats

        return self._store.retry(call, "queue_stats")

    def ping(self, timeout_s: float = 5.0) -> None:
        """Reach the server within ``timeout_s`` or raise, so a CLI fails fast with a clear exit code.

        No retries: the point is a quick answer, not riding out a failover.
        Raises pymongo's ``ConnectionFailure`` (unreachable) or another
        ``PyMongoError`` (refused, e.g. authentication). It builds no index:
        a build on a large collection outlasts the bound (the next call
        builds them under the build's own, see :mod:`.indexes`).
        """
        with pymongo.timeout(timeout_s):
            self._store._database().command("ping")

    def has_due(self, types: Iterable[str], queues: Iterable[str]) -> bool:
        """Whether a job of these types is due in these queues and claimable (a burst worker's exit test).

        The claim's own filter, limited to one document, served by the claim
        index; paused queues and types are left out, as the claim leaves
        them out, with the pause state read fresh. A worker that waited
        for a paused job would wait until someone resumes it.
        """
        types, queues = list(types), list(queues)
        if not types or not queues:
            return False

        def call() -> bool:
            paused = self._control.pause_state()
            claimable_types = [t for t in types if t not in paused.types]
            claimable_queues = [q for q in queues if q not in paused.queues]
            if not claimable_types or not claimable_queues:
                return False
            query = {
                "status": PENDING,
                "queue": {"$in": claimable_queues},
                "type": {"$in": claimable_types},
                "run_at": {"$lte": self._store.now()},
            }
            return self._store.collection.find_one(query, {"_id": 1}) is not None

        return self._store.retry(call, "has_due")

    def running_count(self, worker_id: str) -> int:
        """Jobs held (``processing``) by the worker named ``worker_id``; the lease index narrows to processing."""
        query = {"status": PROCESSING, "lease_owner.worker_id": worker_id}
        return self._store.retry(lambda: self._store.collection.count_documents(query), "running_count")

    def find_jobs(self, query: Mapping[str, Any], limit: int = 1000) -> list[dict[str, Any]]:
        """Raw job documents matching ``query``, oldest first (test assertions, admin tools)."""
        return self._store.retry(
            lambda: list(self._store.collection.find(dict(query), sort=[("_id", 1)], limit=limit)), "find_jobs"
        )

    def get(self, job_id: ObjectId) -> dict[str, Any] | None:
        """One job's raw document, or None if there is no such job."""
        return self._store.retry(lambda: self._store.collection.find_one({"_id": job_id}), "get")

    def count_by_status(self, queue: str | None = None) -> dict[str, int]:
        """Jobs per status (of one queue, or all): one covered aggregation, so the counts are one reading."""
        match: dict[str, Any] = {"status": {"$in": list(ALL_STATUSES)}}
        if queue is not None:
            match["queue"] = queue
        pipeline = [
            {"$match": match},
            {"$project": {"_id": 0, "status": 1}},
            {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ]

        def call() -> dict[str, int]:
            counts = dict.fromkeys(ALL_STATUSES, 0)
            for row in self._store.collection.aggregate(pipeline, hint=CLAIM_INDEX):
                counts[row["_id"]] = row["n"]
            return counts

        return self._store.retry(call, "count")
