"""``store.releases``: the decision about one blocked job, and the one update that carries it out.

A blocked job's fate is known once all its dependencies ended, or as soon
as one under ``cancel`` ended other than completed; until then the outcomes
of those that ended are copied into it, so retention may delete them. The
release is one conditional update from ``blocked``, marked so that a retried
try finds its own; one too large for the job's document is retried without
the copied results, then without the outcomes. When it is tried is
:mod:`.dependencies`' business.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Optional

import bson
from pymongo.errors import DocumentTooLarge, OperationFailure

from ..model import job_log_extra, truncate
from ..status import BLOCKED, CANCELLED, COMPLETED, FAILED, FINISHED, PENDING
from ..validation import dependency_problems
from ..workflows import MAX_DEPENDENCY_RESULT_BYTES
from .faults import is_too_large
from .finals import FinalJob
from .handle import JobStore
from .marks import new_mark

__all__ = ["Release"]

log = logging.getLogger(__name__)

#: A dependency missing for a blocked job younger than this is still being inserted (a graph without
#: a transaction); an older one's dependency was deleted before its outcome was copied.
_INSERT_GRACE = timedelta(minutes=10)
#: Longest error message copied from a dependency that failed.
_MAX_MESSAGE = 500
_DEPENDENCY_FIELDS = {
    "status": 1,
    "finished_at": 1,
    "result": 1,
    "result_error": 1,
    "last_error.type": 1,
    "last_error.message": 1,
}


class Release:
    """Decides blocked jobs, one at a time (see module docstring)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def states(self, ids: Sequence[Any]) -> dict[Any, Mapping[str, Any]]:
        """The status and ``finished_at`` of the stored jobs among ``ids``, by id (one query)."""
        if not ids:
            return {}
        jobs = self._store.collection
        scope = {"_id": {"$in": list(ids)}}  # by _id alone: their key values are not known here (every shard)
        docs = self._store.retry(lambda: list(jobs.find(scope, {"status": 1, "finished_at": 1})), "dependencies")
        return {d["_id"]: d for d in docs}

    def quarantine(self, dependent: Mapping[str, Any], problems: Sequence[str]) -> Optional[str]:
        if not self._store.jobs.quarantine(dependent["_id"], problems, from_status=BLOCKED):
            return None
        log.error("job %s failed: %s", dependent["_id"], "; ".join(problems), extra=job_log_extra(dependent))
        return FAILED

    def judge(
        self, dependent: Mapping[str, Any], states: Optional[Mapping[Any, Mapping[str, Any]]] = None
    ) -> Optional[str]:
        """Decide ``dependent`` if its fate is known: its new status, else None (waiting, or decided elsewhere).

        Its fate is known once all its dependencies ended, or as soon as one
        under ``cancel`` ended other than completed. Every stored dependency is
        read again, the outcomes copied earlier serve only for deleted ones: a
        dependency retried since then decides by how it ends this time.
        ``states`` (of :meth:`states`) spares that read when a sweep read them for a batch.
        """
        store = self._store
        jobs = store.collection
        problems = dependency_problems({**dependent, "status": BLOCKED})
        if problems:  # a hand edit: no release can read it
            return self.quarantine(dependent, problems)
        recorded: dict[str, Any] = dict(dependent.get("dependency_outcomes") or {})
        ids = list(dependent["depends_on"])
        if states is None:
            states = self.states(ids)
        now = store.now()
        outcomes: dict[str, Any] = {}
        copy: list[Any] = []  # ended, and not copied as they ended this time
        stale: list[str] = []  # copied, and running again (retried)
        waiting = False
        for job_id in ids:
            key, state = str(job_id), states.get(job_id)
            if state is None:
                created = dependent.get("created_at")
                if key in recorded:
                    outcomes[key] = recorded[key]
                elif created is None or created > now - _INSERT_GRACE:
                    waiting = True  # not stored yet (a graph being inserted)
                else:
                    outcomes[key] = {"status": "deleted"}
            elif state.get("status") in FINISHED:
                old = recorded.get(key) or {}
                if old.get("status") == state["status"] and old.get("finished_at") == state.get("finished_at"):
                    outcomes[key] = old
                else:
                    copy.append(job_id)
            else:
                waiting = True
                if key in recorded:
                    stale.append(key)
        if copy:
            scope = {"_id": {"$in": copy}}  # by _id alone (every shard), as above
            for doc in store.retry(lambda: list(jobs.find(scope, _DEPENDENCY_FIELDS)), "dependencies"):
                if doc.get("status") in FINISHED:
                    outcomes[str(doc["_id"])] = _outcome(doc)
            waiting = waiting or any(str(i) not in outcomes for i in copy)  # retried or deleted between the reads
        policies = dependent.get("dependency_policies") or {}
        failing = [
            key
            for key in (str(i) for i in ids)
            if key in outcomes and outcomes[key]["status"] != COMPLETED and policies.get(key, "cancel") == "cancel"
        ]
        # With the app's shard key (docs/scaling.rst), so a sharded cluster targets the release.
        blocked = {"_id": dependent["_id"], "status": BLOCKED, **store.shard_key.of(dependent)}
        if waiting and not failing:
            # Copied now, so retention may delete the ended dependencies before the others end.
            self._record(blocked, outcomes, recorded, stale)
            return None
        return self._decide(dependent, blocked, outcomes, failing, now)

    def _record(
        self, blocked: Mapping[str, Any], outcomes: dict[str, Any], recorded: Mapping[str, Any], stale: Sequence[str]
    ) -> None:
        """Copy the outcomes not recorded yet into a waiting dependent; without results if they do not fit."""
        newly = {k: v for k, v in outcomes.items() if recorded.get(k) != v}
        if not newly and not stale:
            return
        jobs = self._store.collection
        for fitting in (newly, _without_results(newly)):
            update: dict[str, Any] = {}
            if fitting:
                update["$set"] = {f"dependency_outcomes.{k}": v for k, v in fitting.items()}
            if stale:
                update["$unset"] = {f"dependency_outcomes.{k}": "" for k in stale}
            try:
                self._store.retry(functools.partial(jobs.update_one, blocked, update), "record_dependencies")
                return
            except (OperationFailure, DocumentTooLarge) as exc:
                if not is_too_large(exc):
                    raise
        log.warning("job %s: its dependencies' outcomes do not fit in it; copied at release", blocked["_id"])

    def _decide(
        self,
        dependent: Mapping[str, Any],
        blocked: Mapping[str, Any],
        outcomes: dict[str, Any],
        failing: Sequence[str],
        now: Any,
    ) -> Optional[str]:
        """The release: one conditional update to pending or cancelled; the results left out if they do not fit."""
        store = self._store
        jobs = store.collection
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

        def call(update: Mapping[str, Any]) -> bool:
            nonlocal tries
            tries += 1
            if jobs.update_one(blocked, {"$set": update}).modified_count:
                return True
            # Released by another process, or by this call's earlier try whose reply was lost.
            return tries > 1 and jobs.find_one({"_id": dependent["_id"], "released_by": mark}, {"_id": 1}) is not None

        # Too large for the job's document (its own data and the copied results past 16 MiB): results left out,
        # then every outcome; the job is released all the same, and says why it has no results.
        lean = {**fields, "dependency_outcomes": _without_results(outcomes)}
        bare = {k: v for k, v in fields.items() if k != "dependency_outcomes"}
        released = False
        for left_out, update in ((None, fields), ("results", lean), ("outcomes", bare)):
            if left_out is not None:
                log.warning("job %s: released without its dependencies' %s: too large", dependent["_id"], left_out)
                why = f"not copied: the dependencies' {left_out} do not fit in the job (16 MiB)"
                update = {**update, "dependency_results_error": why}
            try:
                released = store.retry(functools.partial(call, update), "release_dependent")
                break
            except (OperationFailure, DocumentTooLarge) as exc:
                if not is_too_large(exc) or left_out == "outcomes":
                    raise
        if not released:
            return None
        extra = job_log_extra(dependent)
        if failing:
            store.log.info("job %s cancelled: %s", dependent["_id"], fields["last_error"]["message"], extra=extra)
            store.finals.notify([FinalJob(dependent["_id"], CANCELLED, {**dependent, "status": CANCELLED})])
        else:
            store.log.debug("job %s released: its dependencies ended", dependent["_id"], extra=extra)
        return target


def _outcome(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a dependent keeps of an ended dependency: its status, a bounded result, or its error's message."""
    status = str(doc.get("status"))
    outcome: dict[str, Any] = {"status": status}
    if doc.get("finished_at") is not None:
        outcome["finished_at"] = doc["finished_at"]  # which end it was: a retried dependency ends again
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


def _without_results(outcomes: Mapping[str, Any]) -> dict[str, Any]:
    """``outcomes`` with their results left out, each saying so (they did not fit in the dependent)."""
    return {
        key: {k: v for k, v in o.items() if k != "result"} | {"result_error": "not copied: too large for the dependent"}
        if "result" in o
        else o
        for key, o in outcomes.items()
    }
