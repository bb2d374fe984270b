"""``store.control``: what operators change about the queue, and what schedules remember; cancel requests.

Pause state and schedule state live in a small second collection,
``<jobs collection>_control``, that the store owns. Two things make a
fire time produce exactly one job however many processes run the same
schedule, with no leader:

* the job carries ``schedule`` and ``fire_time`` under a unique index, so the
  database accepts the first insert of a fire time and rejects the others
  (the insert path, :meth:`~.jobs.Jobs.insert`; with a declared shard key,
  a key document inserted with the job, :mod:`.keyed_insert`);
* each schedule's last handled fire time is kept in the control collection
  and only moves forward (``$max``), so a process never goes back to a fire
  time that was handled, even after its job was removed by retention.

Inserting the job first and moving the state second means a crash between
the two leaves the fire time due: the next tick, in any process, inserts it
again (a no-op) and moves the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional
from uuid import uuid4

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..status import ALL_STATUSES, BLOCKED, CANCELLED, PENDING, PROCESSING
from .finals import FinalJob
from .handle import JobStore
from .marks import as_stored, new_mark, pushed_mark
from .siblings import SiblingCollection

__all__ = ["INSTANCE_ID", "PAUSE_ID", "Control", "PauseState", "ScheduleState", "schedule_state_id"]

#: The ``_id`` of the pause document; a worker's change stream watches it (worker/wakeup.py).
PAUSE_ID = _PAUSE_ID = "pause"
_SCHEDULE_KIND = "schedule"
#: The ``_id`` of the document that holds the jobs collection's random id (:meth:`Control.instance_id`).
INSTANCE_ID = "instance"


@dataclass(frozen=True)
class PauseState:
    """Queues and job types that no worker claims from, as stored in the control collection."""

    queues: frozenset[str] = field(default_factory=frozenset)
    types: frozenset[str] = field(default_factory=frozenset)
    #: Bumped by every change of the limit definitions (0: none was ever stored), see ``store/limiter.py``.
    limits_version: int = 0


@dataclass(frozen=True)
class ScheduleState:
    """A schedule's stored state: the last handled fire time per definition, and the latest definition."""

    name: str
    #: Last handled fire time (naive UTC) per definition fingerprint.
    handled: Mapping[str, datetime]
    #: The definition most recently written by a process (job_type, cron, every_ms, timezone, catch_up).
    spec: Mapping[str, Any]
    #: When a process running each definition last handled it (naive UTC, its tick's ``now``), per fingerprint.
    seen: Mapping[str, datetime] = field(default_factory=dict)


def schedule_state_id(name: str) -> str:
    """The ``_id`` of a schedule's state document in the control collection."""
    return f"{_SCHEDULE_KIND}:{name}"


class Control:
    """Pause and resume, schedule state, and cancellation requests."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._docs = SiblingCollection(store, "control")

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        """The control collection (pause and schedule state), beside the jobs collection."""
        return self._docs.collection

    # -- pause and resume ---------------------------------------------------

    def set_paused(self, paused: bool, *, queues: Iterable[str] = (), types: Iterable[str] = ()) -> PauseState:
        """Add queues and job types to the paused sets (or remove them); return the new state."""
        queues, types = sorted(set(queues)), sorted(set(types))
        if paused:
            update: dict[str, Any] = {"$addToSet": {"queues": {"$each": queues}, "types": {"$each": types}}}
        else:
            update = {"$pull": {"queues": {"$in": queues}, "types": {"$in": types}}}
        update["$set"] = {"updated_at": self._store.now()}
        doc = self._store.retry(
            lambda: self.collection.find_one_and_update(
                {"_id": _PAUSE_ID}, update, upsert=True, return_document=ReturnDocument.AFTER
            ),
            "set_paused",
        )
        return _pause_state(doc)

    def pause_state(self) -> PauseState:
        """The paused queues and job types, one read of one small document.

        The same document carries the version of the limit definitions,
        which this read hands to the limiter: so a worker learns whether
        they changed (or exist at all) with no read of its own.
        """
        state = _pause_state(self._store.retry(lambda: self.collection.find_one({"_id": _PAUSE_ID}), "pause_state"))
        self._store.limits.observe(state.limits_version)
        return state

    def bump_limits(self) -> None:
        """Record that the limit definitions changed: every worker reads them again at its next pause read."""
        self._store.retry(
            lambda: self.collection.update_one({"_id": _PAUSE_ID}, {"$inc": {"limits_version": 1}}, upsert=True),
            "bump_limits",
        )

    def instance_id(self) -> str:
        """A random id of this jobs collection, made by the first caller and kept: it tells apart namesakes.

        Two deployments may hold jobs collections of the same database and
        collection names; what they share outside MongoDB (the Redis limit
        hints) is kept apart by this id. One upsert.
        """

        def call() -> str:
            try:
                doc = self.collection.find_one_and_update(
                    {"_id": INSTANCE_ID},
                    {"$setOnInsert": {"id": uuid4().hex}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:  # another process made it first
                doc = self.collection.find_one({"_id": INSTANCE_ID})
            return str((doc or {}).get("id"))

        return self._store.retry(call, "instance_id")

    # -- schedules ----------------------------------------------------------

    def schedule_states(self, names: Optional[Iterable[str]] = None) -> dict[str, ScheduleState]:
        """The stored state of the named schedules (of all that ever ran when ``names`` is None); one read."""
        filt: dict[str, Any] = {"kind": _SCHEDULE_KIND}
        if names is not None:
            filt["_id"] = {"$in": [schedule_state_id(n) for n in names]}
        docs = self._store.retry(lambda: list(self.collection.find(filt)), "schedule_states")
        return {
            doc["name"]: ScheduleState(
                doc["name"], dict(doc.get("handled") or {}), dict(doc.get("spec") or {}), dict(doc.get("seen") or {})
            )
            for doc in docs
            if isinstance(doc.get("name"), str)
        }

    def start_schedule(
        self, name: str, fingerprint: str, baseline: datetime, spec: Mapping[str, Any], seen: Optional[datetime] = None
    ) -> datetime:
        """Record a definition seen for the first time as handled up to ``baseline``; return what is stored.

        The filter matches only while the fingerprint has no entry, so of two
        processes starting the same schedule, the first one's baseline stands
        and the second one reads it back (its upsert fails on the ``_id``).
        """
        path = f"handled.{fingerprint}"
        state_id = schedule_state_id(name)

        def call() -> datetime:
            try:
                self.collection.update_one(
                    {"_id": state_id, path: {"$exists": False}},
                    {
                        "$set": {
                            path: baseline,
                            "kind": _SCHEDULE_KIND,
                            "name": name,
                            "spec": dict(spec),
                            "updated_at": self._store.now(),
                        }
                    },
                    upsert=True,
                )
            except DuplicateKeyError:
                pass  # another process recorded this definition first
            if seen is not None:
                self.collection.update_one({"_id": state_id}, {"$max": {f"seen.{fingerprint}": seen}})
            doc = self.collection.find_one({"_id": state_id}, {path: 1})
            stored = ((doc or {}).get("handled") or {}).get(fingerprint)
            return stored if isinstance(stored, datetime) else baseline

        return self._store.retry(call, "start_schedule")

    def advance_schedule(
        self, name: str, fingerprint: str, handled: datetime, spec: Mapping[str, Any], seen: Optional[datetime] = None
    ) -> None:
        """Move a definition's last handled fire time forward to ``handled``, and its ``seen`` time; never backward."""
        moved: dict[str, Any] = {f"handled.{fingerprint}": handled}
        if seen is not None:
            moved[f"seen.{fingerprint}"] = seen
        update = {
            "$max": moved,
            "$set": {"kind": _SCHEDULE_KIND, "name": name, "spec": dict(spec), "updated_at": self._store.now()},
        }
        self._store.retry(
            lambda: self.collection.update_one({"_id": schedule_state_id(name)}, update, upsert=True),
            "advance_schedule",
        )

    def last_fired_jobs(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The job of each schedule's latest fire time still stored: ``_id``, ``fire_time``, ``status``."""
        found: dict[str, dict[str, Any]] = {}
        for name in names:
            doc = self._store.retry(
                lambda name=name: self._store.collection.find_one(  # type: ignore[misc]
                    {"schedule": name}, {"fire_time": 1, "status": 1}, sort=[("fire_time", -1)]
                ),
                "last_fired_jobs",
            )
            if doc is not None:
                found[name] = doc
        return found

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
        now = as_stored(self._store.now())
        mark = new_mark()
        filt = {"_id": job_id, "status": {"$in": [PENDING, PROCESSING, BLOCKED]}}
        outcomes = {_did(mark, "cancelled"): "cancelled", _did(mark, "requested"): "requested"}
        tries = 0

        def call() -> Optional[str]:
            nonlocal tries
            tries += 1
            jobs = self._store.collection
            if tries > 1:
                doc = jobs.find_one({"_id": job_id, "admin_marks": {"$in": list(outcomes)}}, {"admin_marks": 1})
                if doc is not None:
                    return next(outcomes[m] for m in doc["admin_marks"] if m in outcomes)
            for _ in range(2):  # again if the app changed the job's key values since they were read
                keyed = self._store.shard_key.scope(filt, jobs)
                before = jobs.find_one_and_update(
                    keyed, _cancel_pipeline(now, mark), projection=projection, return_document=ReturnDocument.BEFORE
                )
                if before is not None or keyed is filt:
                    break
            if before is None:
                return None  # finished or missing
            if before.get("status") in (PENDING, BLOCKED):
                told.append(before)
                return "cancelled"
            return "requested"

        told: list[dict[str, Any]] = []
        projection = dict.fromkeys({"status", *self._store.finals.fields}, 1)
        outcome = self._store.retry(call, "request_cancel")
        if outcome == "cancelled" and self._store.finals.active:
            # A retry that found its earlier try's mark has no document: read the fields the listeners need.
            doc = told[-1] if told else self._store.collection.find_one({"_id": job_id}, projection)
            self._store.finals.notify_one(doc or {"_id": job_id}, CANCELLED)
        return outcome

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
        now = as_stored(self._store.now())
        mark = new_mark()
        flaggable = {"status": PROCESSING, "cancel_requested": {"$ne": True}}
        waiting = {"status": {"$in": [PENDING, BLOCKED]}}
        match = {**filt, "$or": [waiting, flaggable]} if running else {**filt, **waiting}
        cancelled_mark, requested_mark = _did(mark, "cancelled"), _did(mark, "requested")
        any_status = {**filt, "status": {"$in": list(ALL_STATUSES)}}
        # A job flagged by one try and cancelled by a later one (its worker let it go) counts once.
        flagged_only = {"$all": [requested_mark], "$ne": cancelled_mark}
        ours_cancelled = {**filt, "status": CANCELLED, "admin_marks": cancelled_mark}
        tries = 0

        def call() -> tuple[int, int]:
            nonlocal tries
            tries += 1
            jobs = self._store.collection
            modified = jobs.update_many(match, _cancel_pipeline(now, mark)).modified_count
            if tries == 1:
                cancelled = jobs.count_documents(ours_cancelled)
                return cancelled, max(0, modified - cancelled)
            cancelled = jobs.count_documents({**any_status, "admin_marks": cancelled_mark})
            requested = jobs.count_documents({**any_status, "admin_marks": flagged_only}) if running else 0
            return cancelled, requested

        counts = self._store.retry(call, "cancel_jobs")
        if counts[0] and self._store.finals.active:
            fields = dict.fromkeys(self._store.finals.fields, 1)
            ended = self._store.retry(lambda: list(self._store.collection.find(ours_cancelled, fields)), "cancel_jobs")
            self._store.finals.notify([FinalJob(doc["_id"], CANCELLED, doc) for doc in ended])
        return counts


def _did(mark: str, outcome: str) -> str:
    """The mark a cancel writes into ``admin_marks``: this call's mark and what it did to the job."""
    return f"{mark}:{outcome}"


def _cancel_pipeline(now: datetime, mark: str) -> list[dict[str, Any]]:
    """An update that cancels a pending job and flags a processing one, by the status it finds, under ``mark``."""
    pending = {"$in": ["$status", [PENDING, BLOCKED]]}  # a blocked job is cancelled like a pending one
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
    version = doc.get("limits_version")
    return PauseState(
        frozenset(doc.get("queues") or ()),
        frozenset(doc.get("types") or ()),
        version if isinstance(version, int) else 0,
    )
