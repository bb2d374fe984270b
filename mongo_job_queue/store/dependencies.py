"""``store.dependencies``: blocked jobs, released by the final write of their last dependency.

A job enqueued with ``depends_on`` is inserted ``blocked``: the claim
(``status == pending``) and its index never see it. It leaves ``blocked``
by one conditional update, ``{_id, status: blocked}`` to ``pending`` (or to
``cancelled`` under the ``cancel`` policy), so however many processes try
at once, one release lands; a retried try finds its own by its mark.

Who tries, and when:

* **The final write** of a job (``store.finals``) looks up its blocked
  dependents by the partial index ``mjq_dependents`` and tries each. It
  copies the ended job's outcome (status, bounded result) into every
  dependent still waiting for others, so retention may delete the
  dependency afterwards without the dependent losing anything.
* **The enqueue**, after inserting a blocked job, checks its dependencies
  once: those that ended before it existed release it at once.
* **The sweep** (:meth:`Dependencies.sweep`, a maintenance service) walks
  the blocked jobs in ``_id`` order, a bounded batch per step, for notices
  lost to a crash between a final write and its notice.

The lookup by the final write: a dependency's document carries
``has_dependents``; a worker's final write tells the document as it was
claimed, so a dependent enqueued while its dependency runs is not on it.
Once this process knows the app uses dependencies (it enqueued one, its
sweep or a probe found a blocked job, or a final write carried the flag)
every final write queries the index, a lookup in an index of blocked
jobs only. Before that, flagged jobs query it, and the others probe
"is any job blocked?" at most once a second: an app without dependencies
pays one indexed read a second while jobs end, nothing per job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Optional

import bson
from bson import ObjectId
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from ..errors import InvalidJobError, WorkflowError
from ..model import job_log_extra, truncate
from ..status import BLOCKED, CANCELLED, COMPLETED, FINISHED, PENDING
from ..workflows import MAX_DEPENDENCY_RESULT_BYTES
from .faults import short_error
from .finals import FinalJob
from .handle import MAINTENANCE_MAX_TIME_MS, JobStore
from .marks import new_mark

__all__ = ["SWEEP_BATCH", "Dependencies"]

log = logging.getLogger(__name__)

#: Blocked jobs re-checked per sweep step.
SWEEP_BATCH = 100
#: A dependency missing for a blocked job younger than this is still being inserted (a graph without
#: a transaction); an older one's dependency was deleted before its outcome was copied.
_INSERT_GRACE = timedelta(minutes=10)
#: How long a probe that found no blocked job stands (the final writes of unflagged jobs then look for none).
_PROBE_INTERVAL_S = 1.0
#: Longest error message copied from a dependency that failed.
_MAX_MESSAGE = 500
_DEPENDENT_FIELDS = ("depends_on", "dependency_policies", "dependency_outcomes", "created_at", "type", "queue")
_DEPENDENCY_FIELDS = {"status": 1, "result": 1, "result_error": 1, "last_error.type": 1, "last_error.message": 1}
_NO_TRANSACTIONS = (20, 263)  # IllegalOperation (standalone server), OperationNotSupportedInTransaction


class Dependencies:
    """Releases blocked jobs: on each final write, after each insert, and in the sweep (see module docstring)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        #: Whether this process knows the app uses dependencies: then every final write looks for dependents.
        self.in_use = False
        #: Called after a job was released to pending (the queue wakes its local worker).
        self.on_release: Optional[Callable[[], None]] = None
        self._local = threading.local()
        self._cursor: Optional[ObjectId] = None
        self._probe_after = 0.0
        store.finals.add(self.on_final, fields=("has_dependents",))

    # -- enqueue ------------------------------------------------------------

    def prepare(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """Before inserting ``docs``: every dependency outside them exists; then flag them ``has_dependents``.

        Raises:
            WorkflowError: a dependency names no stored job; nothing was written.
        """
        new = {d["_id"] for d in docs}
        outside = sorted({i for d in docs if d.get("status") == BLOCKED for i in d["depends_on"] if i not in new})
        if not any(d.get("status") == BLOCKED for d in docs):
            return
        self.in_use = True
        if not outside:
            return
        jobs = self._store.collection
        found = self._store.retry(lambda: {d["_id"] for d in jobs.find({"_id": {"$in": outside}}, {"_id": 1})}, "deps")
        missing = [str(i) for i in outside if i not in found]
        if missing:
            raise WorkflowError(f"depends_on names unknown job(s) {', '.join(missing[:5])}; nothing was written")
        flag = {"_id": {"$in": outside}, "has_dependents": {"$ne": True}}
        self._store.retry(lambda: jobs.update_many(flag, {"$set": {"has_dependents": True}}), "flag_dependencies")

    def settle(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """After inserting ``docs``: release those whose dependencies all ended before they were stored."""
        for doc in docs:
            if doc.get("status") == BLOCKED:
                self.try_release(doc)

    def insert_all(self, docs: Sequence[dict[str, Any]], fallback: Callable[[Sequence[dict[str, Any]]], None]) -> None:
        """Insert a graph's ``docs`` in one transaction; without transactions, ``fallback`` (an ordered insert).

        The fallback removes what it inserted when a later job is refused;
        ``docs`` come dependents first, so the jobs that can run at once are
        written last.
        """
        jobs = self._store.collection
        ids = [d["_id"] for d in docs]

        def call() -> bool:
            if jobs.count_documents({"_id": {"$in": ids}}) == len(ids):
                return True  # an earlier try's commit whose reply was lost
            try:
                with jobs.database.client.start_session() as session:
                    session.with_transaction(lambda s: jobs.insert_many(docs, ordered=True, session=s))
            except (BulkWriteError, DuplicateKeyError) as exc:  # an app's unique index, say: the whole graph is out
                errors = (exc.details or {}).get("writeErrors") or [{}]
                message = errors[0].get("errmsg") or short_error(exc)
                raise InvalidJobError(
                    f"a job of the workflow was refused by the server: {message}; nothing written"
                ) from exc
            except OperationFailure as exc:
                if exc.code in _NO_TRANSACTIONS:
                    return False
                raise
            except NotImplementedError:  # a test double without sessions (mongomock)
                return False
            return True

        if not self._store.retry(call, "insert_graph"):
            fallback(docs)

    # -- release ------------------------------------------------------------

    def on_final(self, ended: Sequence[FinalJob]) -> None:
        """The listener of final writes: try the blocked dependents of ``ended``; a cascade is a loop, not recursion."""
        queued: Optional[list[FinalJob]] = getattr(self._local, "queued", None)
        if queued is not None:  # a cancel this thread is writing told us: handled by the loop below
            queued.extend(ended)
            return
        self._local.queued = queued = list(ended)
        try:
            while queued:
                batch = list(queued)
                queued.clear()
                self._release_dependents_of(batch)
        finally:
            self._local.queued = None

    def _release_dependents_of(self, ended: Sequence[FinalJob]) -> None:
        jobs = self._store.collection
        if any(job.doc.get("has_dependents") for job in ended):
            self.in_use = True
        elif not self.in_use:
            # A dependent enqueued while its dependency ran is not on the claimed document: whether this
            # app has blocked jobs at all is probed (one indexed read), at most once a second until it has.
            if time.monotonic() < self._probe_after:
                return
            self._probe_after = time.monotonic() + _PROBE_INTERVAL_S
            if self._store.retry(lambda: jobs.find_one({"status": BLOCKED}, {"_id": 1}), "probe_blocked") is None:
                return
            self.in_use = True
        ids = [job.id for job in ended]
        projection = self._projection()
        dependents = self._store.retry(
            lambda: list(jobs.find({"depends_on": {"$in": ids}, "status": BLOCKED}, projection)), "find_dependents"
        )
        for dependent in dependents:
            self.try_release(dependent)

    def _projection(self) -> dict[str, int]:
        fields = {*_DEPENDENT_FIELDS, *self._store.finals.fields, *self._store.shard_key.fields}
        return dict.fromkeys({*fields, "has_dependents", "attempts"}, 1)

    def try_release(self, dependent: Mapping[str, Any]) -> Optional[str]:
        """Release ``dependent`` if all its dependencies ended: its new status, else None (waiting, or released)."""
        store = self._store
        jobs = store.collection
        recorded: dict[str, Any] = dict(dependent.get("dependency_outcomes") or {})
        todo = [i for i in dependent["depends_on"] if str(i) not in recorded]
        found: dict[Any, dict[str, Any]] = {}
        if todo:
            ids = {"_id": {"$in": todo}}  # by _id alone: their key values are not known here (every shard)
            docs = store.retry(lambda: list(jobs.find(ids, _DEPENDENCY_FIELDS)), "dependencies")
            found = {d["_id"]: d for d in docs}
        now = store.now()
        outcomes = dict(recorded)
        waiting = False
        for job_id in todo:
            doc = found.get(job_id)
            if doc is None:
                created = dependent.get("created_at")
                if created is None or created > now - _INSERT_GRACE:
                    waiting = True  # not stored yet (a graph being inserted)
                else:
                    outcomes[str(job_id)] = {"status": "deleted"}
            elif doc.get("status") in FINISHED:
                outcomes[str(job_id)] = _outcome(doc)
            else:
                waiting = True
        # With the app's shard key (docs/scaling.rst), so a sharded cluster targets the release.
        blocked = {"_id": dependent["_id"], "status": BLOCKED, **store.shard_key.of(dependent)}
        if waiting:
            # Copied now, so retention may delete the ended dependencies before the others end.
            newly = {f"dependency_outcomes.{k}": v for k, v in outcomes.items() if k not in recorded}
            if newly:
                store.retry(lambda: jobs.update_one(blocked, {"$set": newly}), "record_dependencies")
            return None
        policies = dependent.get("dependency_policies") or {}
        failing = [
            key
            for key in (str(i) for i in dependent["depends_on"])
            if outcomes[key]["status"] != COMPLETED and policies.get(key, "cancel") == "cancel"
        ]
        target = CANCELLED if failing else PENDING
        mark = new_mark()
        fields: dict[str, Any] = {"status": target, "dependency_outcomes": outcomes, "updated_at": now}
        fields["released_by"] = mark
        if failing:
            first = failing[0]
            reason = f"dependency {first} ended {outcomes[first]['status']}" + (
                f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
            )
            fields["finished_at"] = now
            fields["last_error"] = {"type": "mongo_job_queue.errors.DependencyFailed", "message": reason, "at": now}
        tries = 0

        def call() -> bool:
            nonlocal tries
            tries += 1
            if jobs.update_one(blocked, {"$set": fields}).modified_count:
                return True
            # Released by another process, or by this call's earlier try whose reply was lost.
            return tries > 1 and jobs.find_one({"_id": dependent["_id"], "released_by": mark}, {"_id": 1}) is not None

        if not store.retry(call, "release_dependent"):
            return None
        extra = job_log_extra(dependent)
        if failing:
            store.log.info("job %s cancelled: %s", dependent["_id"], fields["last_error"]["message"], extra=extra)
            store.finals.notify([FinalJob(dependent["_id"], CANCELLED, {**dependent, "status": CANCELLED})])
        else:
            store.log.debug("job %s released: its dependencies ended", dependent["_id"], extra=extra)
            if self.on_release is not None:
                self.on_release()
        return target

    # -- sweep and reads ----------------------------------------------------

    def sweep(self, now: object = None) -> int:
        """One bounded step over the blocked jobs (``_id`` order, from where the last stopped); how many it released."""
        query: dict[str, Any] = {"status": BLOCKED}
        if self._cursor is not None:
            query["_id"] = {"$gt": self._cursor}
        jobs = self._store.collection
        projection = self._projection()
        batch = self._store.retry(
            lambda: list(
                jobs.find(query, projection).sort("_id", 1).limit(SWEEP_BATCH).max_time_ms(MAINTENANCE_MAX_TIME_MS)
            ),
            "sweep_blocked",
        )
        self._cursor = batch[-1]["_id"] if len(batch) == SWEEP_BATCH else None
        if batch:
            self.in_use = True
        return sum(1 for doc in batch if self.try_release(doc) is not None)

    def held(self) -> list[ObjectId]:
        """The ended or running jobs that blocked jobs still need (their outcome not copied yet): purge keeps them."""
        jobs = self._store.collection
        docs = self._store.retry(
            lambda: list(jobs.find({"status": BLOCKED}, {"depends_on": 1, "dependency_outcomes": 1})), "held"
        )
        return sorted(
            {i for d in docs for i in d.get("depends_on") or () if str(i) not in (d.get("dependency_outcomes") or {})}
        )

    def dependents(self, job_id: ObjectId) -> list[dict[str, Any]]:
        """The jobs that depend on ``job_id`` (any status), for the admin surface; bounded to 1,000."""
        jobs = self._store.collection
        fields = {"status": 1, "type": 1, "dependency_policies": 1}
        return self._store.retry(lambda: list(jobs.find({"depends_on": job_id}, fields).limit(1000)), "dependents")

    def dependencies(self, doc: Mapping[str, Any]) -> list[tuple[ObjectId, str, str]]:
        """``doc``'s dependencies as ``(id, policy, status)``: the stored job's status, else the copied outcome."""
        ids = list(doc.get("depends_on") or ())
        if not ids:
            return []
        jobs = self._store.collection
        now = {
            d["_id"]: str(d.get("status"))
            for d in self._store.retry(lambda: list(jobs.find({"_id": {"$in": ids}}, {"status": 1})), "dependencies")
        }
        copied = doc.get("dependency_outcomes") or {}
        policies = doc.get("dependency_policies") or {}
        rows = []
        for i in ids:
            status = now.get(i) or (copied.get(str(i)) or {}).get("status") or "deleted"
            rows.append((i, str(policies.get(str(i), "cancel")), str(status)))
        return rows


def _outcome(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a dependent keeps of an ended dependency: its status, a bounded result, or its error's message."""
    status = str(doc.get("status"))
    outcome: dict[str, Any] = {"status": status}
    if status == COMPLETED:
        if "result" in doc:
            size = len(bson.encode({"result": doc["result"]}))
            if size <= MAX_DEPENDENCY_RESULT_BYTES:
                outcome["result"] = doc["result"]
            else:
                outcome["result_error"] = f"not copied: {size} bytes exceed {MAX_DEPENDENCY_RESULT_BYTES}"
        if doc.get("result_error"):
            outcome["result_error"] = truncate(str(doc["result_error"]), _MAX_MESSAGE)
    else:
        error = doc.get("last_error") or {}
        if error:
            outcome["error"] = f"{error.get('type', '?')}: {truncate(str(error.get('message', '')), _MAX_MESSAGE)}"
    return outcome
