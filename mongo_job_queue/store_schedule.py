"""The store's schedule queries: schedule state in the control collection, and one job per fire time.

:class:`ScheduleQueries` is a mixin of :class:`~mongo_job_queue.store.JobStore`.
Two things make a fire time produce exactly one job however many processes
run the same schedule, with no leader:

* the job carries ``schedule`` and ``fire_time`` under a unique index, so the
  database accepts the first insert of a fire time and rejects the others;
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
from typing import TYPE_CHECKING, Any, Optional

from pymongo.errors import DuplicateKeyError

from .errors import InvalidJobError
from .store_base import StoreBase
from .store_collection import unique_insert_protected
from .store_control import duplicate_field

if TYPE_CHECKING:
    from pymongo.collection import Collection

__all__ = ["ScheduleQueries", "ScheduleState", "schedule_state_id"]

_KIND = "schedule"


def schedule_state_id(name: str) -> str:
    """The ``_id`` of a schedule's state document in the control collection."""
    return f"{_KIND}:{name}"


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


class ScheduleQueries(StoreBase):
    """Schedule queries; mixed into JobStore."""

    if TYPE_CHECKING:

        @property
        def control(self) -> Collection[dict[str, Any]]: ...

        def insert_unique(self, doc: dict[str, Any]) -> Optional[dict[str, Any]]: ...

    def schedule_states(self, names: Optional[Iterable[str]] = None) -> dict[str, ScheduleState]:
        """The stored state of the named schedules (of all that ever ran when ``names`` is None); one read."""
        filt: dict[str, Any] = {"kind": _KIND}
        if names is not None:
            filt["_id"] = {"$in": [schedule_state_id(n) for n in names]}
        docs = self._retry(lambda: list(self.control.find(filt)), "schedule_states")
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

        def call() -> datetime:
            try:
                self.control.update_one(
                    {"_id": schedule_state_id(name), path: {"$exists": False}},
                    {
                        "$set": {
                            path: baseline,
                            "kind": _KIND,
                            "name": name,
                            "spec": dict(spec),
                            "updated_at": self.now(),
                        }
                    },
                    upsert=True,
                )
            except DuplicateKeyError:
                pass  # another process recorded this definition first
            if seen is not None:
                self.control.update_one({"_id": schedule_state_id(name)}, {"$max": {f"seen.{fingerprint}": seen}})
            doc = self.control.find_one({"_id": schedule_state_id(name)}, {path: 1})
            stored = ((doc or {}).get("handled") or {}).get(fingerprint)
            return stored if isinstance(stored, datetime) else baseline

        return self._retry(call, "start_schedule")

    def advance_schedule(
        self, name: str, fingerprint: str, handled: datetime, spec: Mapping[str, Any], seen: Optional[datetime] = None
    ) -> None:
        """Move a definition's last handled fire time forward to ``handled``, and its ``seen`` time; never backward."""
        moved: dict[str, Any] = {f"handled.{fingerprint}": handled}
        if seen is not None:
            moved[f"seen.{fingerprint}"] = seen
        update = {
            "$max": moved,
            "$set": {"kind": _KIND, "name": name, "spec": dict(spec), "updated_at": self.now()},
        }
        self._retry(
            lambda: self.control.update_one({"_id": schedule_state_id(name)}, update, upsert=True),
            "advance_schedule",
        )

    def fire_holder(self, doc: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """The stored job of ``doc``'s schedule and fire time, if any."""
        return self.collection.find_one({"schedule": doc["schedule"], "fire_time": doc["fire_time"]})

    def insert_fire(self, doc: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Insert the job of one fire time; None if inserted, else the job that holds the fire time (or the key).

        The unique index on ``(schedule, fire_time)`` decides between the
        processes firing the same schedule at the same moment. A job with a
        ``unique_key`` (``overlap=False``) goes through :meth:`insert_unique`,
        which also returns the schedule's unfinished job holding the key.
        """
        if "unique_key" in doc:
            return self.insert_unique(doc)
        tries = 0

        def call() -> Optional[dict[str, Any]]:
            nonlocal tries
            tries += 1
            try:
                self.collection.insert_one(doc)
                if unique_insert_protected(self.model, self.collection, doc["_id"]):
                    return None
                # A duplicate fire in a collection re-created without the index: insert it again, checked.
                self.collection.insert_one(doc)
                return None
            except DuplicateKeyError as exc:
                if tries > 1 or duplicate_field(exc) in ("schedule", "?"):
                    # The holder may be this very document, inserted by an
                    # earlier try whose reply was lost.
                    holder = self.fire_holder(doc)
                    if holder is not None:
                        return None if holder["_id"] == doc["_id"] else holder
                raise InvalidJobError(f"job violates a unique index of {self.model.__name__}: {exc}") from exc

        return self._retry(call, "insert_fire")

    def last_fired_jobs(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The job of each schedule's latest fire time still stored: ``_id``, ``fire_time``, ``status``."""
        found: dict[str, dict[str, Any]] = {}
        for name in names:
            doc = self._retry(
                lambda name=name: self.collection.find_one(  # type: ignore[misc]
                    {"schedule": name}, {"fire_time": 1, "status": 1}, sort=[("fire_time", -1)]
                ),
                "last_fired_jobs",
            )
            if doc is not None:
                found[name] = doc
        return found
