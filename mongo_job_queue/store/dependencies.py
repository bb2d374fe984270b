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
  the blocked jobs in ``_id`` order, batch by batch for up to
  ``SWEEP_BUDGET_S`` per step, for notices lost to a crash between a final
  write and its notice.
* **A retry** of a job with dependencies (``store.admin``) puts it back to
  ``blocked`` and re-checks it at once (:meth:`Dependencies.recheck`).

The decision and its update are :mod:`.releases`'; an error deciding one
job is logged (and, unless transient, fails that job) and never stops the
others from being tried.

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
from typing import Any, Optional

from bson import ObjectId
from bson.errors import BSONError
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from ..errors import InvalidJobError, WorkflowError
from ..model import job_log_extra
from ..status import BLOCKED, PENDING
from .faults import is_transient, short_error
from .finals import FinalJob
from .handle import MAINTENANCE_MAX_TIME_MS, JobStore
from .keys import keys_of
from .releases import Release

__all__ = ["SWEEP_BATCH", "SWEEP_BUDGET_S", "Dependencies"]

log = logging.getLogger(__name__)

#: Blocked jobs read per query of the sweep.
SWEEP_BATCH = 100
#: How long one sweep step goes on through the blocked jobs before it leaves the rest to the next.
SWEEP_BUDGET_S = 2.0
#: How long a probe that found no blocked job stands (the final writes of unflagged jobs then look for none).
_PROBE_INTERVAL_S = 1.0
_DEPENDENT_FIELDS = ("depends_on", "dependency_policies", "dependency_outcomes", "created_at", "type", "queue")
_MAX_RELEASES = 10
_NO_TRANSACTIONS = (20, 263)  # IllegalOperation (standalone server), OperationNotSupportedInTransaction


class Dependencies:
    """Releases blocked jobs: on each final write, after each insert, and in the sweep (see module docstring)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        #: Whether this process knows the app uses dependencies: then every final write looks for dependents.
        self.in_use = False
        #: Called after a job was released to pending (the queue wakes its local worker).
        self.on_release: Optional[Callable[[], None]] = None
        self._release = Release(store)
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

        Without a transaction every job is inserted ``blocked``, the roots
        too, and the roots are made ``pending`` in one update once all are in:
        a job refused midway makes ``fallback`` remove the ones before it,
        none of which can have run. A crash before that update leaves the
        roots blocked with no dependencies: the sweep releases them.

        With a declared shard key the transaction also inserts the key
        documents of the graph's unique and fired jobs: a held key refuses
        the whole graph (as the unique index does without one), a free key
        is released and the transaction tried again; such a graph needs
        transactions.
        """
        jobs = self._store.collection
        ids = [d["_id"] for d in docs]
        keyed = self._store.jobs.keyed
        # With a declared shard key, the key documents of its unique and fired jobs (store/keyed_insert.py).
        keys = keyed.graph_keys(docs)

        def txn(session: Any, step: list[str]) -> None:
            step[0] = "keys"
            if keys:
                keys_of(jobs).insert_many(keys, ordered=True, session=session)
            step[0] = "jobs"
            jobs.insert_many(docs, ordered=True, session=session)

        step = [""]  # which insert of the transaction failed

        def call() -> bool:
            for _ in range(_MAX_RELEASES):
                if jobs.count_documents({"_id": {"$in": ids}}) == len(ids):
                    return True  # an earlier try's commit whose reply was lost
                step[0] = ""
                try:
                    with jobs.database.client.start_session() as session:
                        session.with_transaction(lambda s: txn(s, step))
                except (BulkWriteError, DuplicateKeyError) as exc:  # an app's unique index, say: the whole graph is out
                    errors = (exc.details or {}).get("writeErrors") or [{}]
                    if step[0] == "keys":
                        keyed.release_for_graph(keys[errors[0].get("index", 0)])  # a held key refuses it
                        continue
                    message = errors[0].get("errmsg") or short_error(exc)
                    raise InvalidJobError(
                        f"a job of the workflow was refused by the server: {message}; nothing written"
                    ) from exc
                except OperationFailure as exc:
                    if exc.code in _NO_TRANSACTIONS and keys:
                        raise InvalidJobError(
                            "a workflow with unique jobs of a model with a shard_key needs transactions "
                            f"(a replica set or a sharded cluster); nothing written: {short_error(exc)}"
                        ) from exc
                    if exc.code in _NO_TRANSACTIONS:
                        return False
                    raise
                except NotImplementedError as exc:  # a test double without sessions (mongomock)
                    if keys:
                        raise InvalidJobError(
                            "a workflow with unique jobs of a model with a shard_key needs transactions; "
                            "nothing written"
                        ) from exc
                    return False
                return True
            raise InvalidJobError("a key of the workflow's jobs is contended; try again")

        if self._store.retry(call, "insert_graph"):
            return
        roots = [d["_id"] for d in docs if d.get("status") != BLOCKED]
        fallback([d if d.get("status") == BLOCKED else {**d, "status": BLOCKED, "depends_on": []} for d in docs])
        if roots:
            run = {"$set": {"status": PENDING}, "$unset": {"depends_on": ""}}
            self._store.retry(lambda: jobs.update_many({"_id": {"$in": roots}, "status": BLOCKED}, run), "run_roots")

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
        if any(job.doc.get("has_dependents") for job in ended):
            self.in_use = True
        elif not self.in_use:
            # A dependent enqueued while its dependency ran is not on the claimed document: whether this
            # app has blocked jobs at all is probed (one indexed read), at most once a second until it has.
            if time.monotonic() < self._probe_after:
                return
            self._probe_after = time.monotonic() + _PROBE_INTERVAL_S
            probe = self._store.retry(
                lambda: self._store.collection.find_one({"status": BLOCKED}, {"_id": 1}), "probe_blocked"
            )
            if probe is None:
                return
            self.in_use = True
        jobs = self._store.collection
        ids = [job.id for job in ended]
        projection = self._projection()
        dependents = self._store.retry(
            lambda: list(jobs.find({"depends_on": {"$in": ids}, "status": BLOCKED}, projection)), "find_dependents"
        )
        for dependent in dependents:
            self._try_guarded(dependent)

    def _projection(self) -> dict[str, int]:
        fields = {*_DEPENDENT_FIELDS, *self._store.finals.fields, *self._store.shard_key.fields}
        return dict.fromkeys({*fields, "has_dependents", "attempts"}, 1)

    def _try_guarded(
        self, dependent: Mapping[str, Any], states: Optional[Mapping[Any, Mapping[str, Any]]] = None
    ) -> Optional[str]:
        """:meth:`try_release`, its error logged: one damaged or refused dependent never holds up the others.

        A transient error leaves the job to the next try (the sweep). A write
        or an encoding the server or the driver refused for good would come
        back at every try, so the job is failed with it. Any other error is
        this library's, not the job's: logged, and the job left blocked.
        """
        try:
            return self.try_release(dependent) if states is None else self.try_release(dependent, states=states)
        except Exception as exc:
            extra = job_log_extra(dependent)
            if is_transient(exc):
                log.warning("job %s: release not tried, left to the sweep: %s", dependent.get("_id"), exc, extra=extra)
                return None
            if not isinstance(exc, (PyMongoError, BSONError)):
                log.exception("job %s: its release failed; left blocked", dependent.get("_id"), extra=extra)
                return None
            log.exception("job %s: its release was refused; failing the job", dependent.get("_id"), extra=extra)
            try:
                return self._release.quarantine(dependent, [f"its release was refused: {short_error(exc)}"])
            except Exception:
                log.exception("job %s: could not fail it after its release failed", dependent.get("_id"), extra=extra)
                return None

    def try_release(
        self, dependent: Mapping[str, Any], states: Optional[Mapping[Any, Mapping[str, Any]]] = None
    ) -> Optional[str]:
        """Decide ``dependent`` if its fate is known (:meth:`.Release.judge`): its new status, else None."""
        target = self._release.judge(dependent, states)
        if target == PENDING and self.on_release is not None:
            self.on_release()
        return target

    def recheck(self, ids: Sequence[ObjectId]) -> None:
        """Try to release these jobs if blocked (a retried dependent whose dependencies may all have ended)."""
        jobs = self._store.collection
        found = self._store.retry(
            lambda: list(jobs.find({"_id": {"$in": list(ids)}, "status": BLOCKED}, self._projection())), "recheck"
        )
        if found:
            self.in_use = True
        for doc in found:
            self._try_guarded(doc)

    # -- sweep and reads ----------------------------------------------------

    def sweep(self, now: object = None) -> int:
        """Re-check blocked jobs in ``_id`` order from where the last step stopped, for up to ``SWEEP_BUDGET_S``.

        Batch by batch: each batch's dependencies are read in one query, so a
        job whose dependencies all still run costs no read of its own, and one
        step covers thousands of blocked jobs. Returns how many it decided.
        """
        jobs = self._store.collection
        projection = self._projection()
        deadline = time.monotonic() + SWEEP_BUDGET_S
        decided = 0
        while True:
            query: dict[str, Any] = {"status": BLOCKED}
            if self._cursor is not None:
                query["_id"] = {"$gt": self._cursor}
            batch = self._store.retry(
                lambda q=query: list(  # type: ignore[misc]
                    jobs.find(q, projection).sort("_id", 1).limit(SWEEP_BATCH).max_time_ms(MAINTENANCE_MAX_TIME_MS)
                ),
                "sweep_blocked",
            )
            self._cursor = batch[-1]["_id"] if len(batch) == SWEEP_BATCH else None
            if batch:
                self.in_use = True
            ids = {i for d in batch if isinstance(d.get("depends_on"), list) for i in d["depends_on"]}
            states = self._release.states([i for i in ids if isinstance(i, ObjectId)])
            decided += sum(1 for doc in batch if self._try_guarded(doc, states) is not None)
            if self._cursor is None or time.monotonic() >= deadline:
                return decided

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
