"""The admin UI's reads: each tried once, under the queue's ``db_timeout_ms`` (which pymongo sends as ``maxTimeMS``).

A page view costs one bounded try per query. The store's retry rides out
a failover for the worker, and counts a timeout as transient; for a page
that would hold the request ``db_retry_attempts`` times as long, once per
live refresh, on a query that ran out of time and would again. So the UI
reads through the queue's own store (the one handle on its collection)
inside :meth:`~mongo_job_queue.store.JobStore.tried_once`, which gives the
calls of the request's thread one try. A timeout is reported as
:class:`TooSlow`, an unreachable server as :class:`Unavailable` (both 503).
Writes (actions, audit records) run outside it and keep the store's retries:
they are idempotent, and a half-done action is worse than a slow one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

from ...schedules.manager import ScheduleInfo, schedule_infos
from ...schedules.service import Scheduler
from ...status import ALL_STATUSES
from ...store import JobStore
from ...store.faults import is_transient
from ...store.index_once import IndexOnce

__all__ = ["AdminReads", "TooSlow", "Unavailable"]

T = TypeVar("T")

#: What a timeout of the job list's queries asks of the user.
NARROW = "narrow the filter (a status, queue or type)"
#: What a timeout of the dashboard's and the schedules page's reads says.
SLOW = "the collection is large or the server busy; try again later"


class TooSlow(Exception):
    """A read ran out of its time bound: the filter is too broad for an index, or the server too busy."""


class Unavailable(Exception):
    """The database could not be reached (or failed over) during a read; the next view tries again."""


class AdminReads:
    """One try per read, for the pages of one queue, given the queue's store."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    @property
    def bound_ms(self) -> int:
        """The time bound of each read: the queue's ``db_timeout_ms`` (``maxTimeMS`` is what is left of it)."""
        return round(self.store.config.db_timeout_s * 1000)

    def once(self, fn: Callable[[], T], what: str, advice: str = SLOW) -> T:
        """Run ``fn``, each of its calls through :attr:`store` tried once; translate a timeout or an outage."""
        try:
            with self.store.tried_once():
                return fn()
        except PyMongoError as exc:
            if exc.timeout and not isinstance(exc, ServerSelectionTimeoutError):
                raise TooSlow(f"{what} took longer than {self.bound_ms} ms: {advice}.") from exc
            if is_transient(exc):  # no server to select, a failover, a dropped connection
                raise Unavailable(f"The database did not answer ({what}); try again in a moment.") from exc
            raise

    def run(self, fn: Callable[[], T], op: str, what: str, advice: str = SLOW) -> T:
        """:meth:`once` of a query of the UI's own: one bounded try of ``fn``."""
        return self.once(lambda: self.store.retry(fn, op), what, advice)

    def indexed(
        self,
        indexes: IndexOnce,
        suffix: str,
        create: Callable[[], object],
        fn: Callable[[], T],
        op: str,
        what: str,
        advice: str = SLOW,
    ) -> T:
        """:meth:`run` of a query that hints an index of the UI's own, created first under the index build's bound."""

        def query() -> T:
            return self.store.retry(fn, op)

        return self.once(lambda: indexes.hinted(self.store, suffix, create, query), what, advice)

    # -- the dashboard's and the schedules page's reads --------------------

    def stats(self) -> dict[str, Any]:
        """Per queue the counts and oldest due age, and what is paused: each read once."""
        counts = self.once(self.store.admin.queue_stats, "Counting the jobs")
        state = self.once(self.store.control.pause_state, "Reading the pause state")
        empty = {"counts": dict.fromkeys(ALL_STATUSES, 0), "oldest_due_age_s": None}
        return {
            "stats": {name: counts.get(name, empty) for name in sorted(set(counts) | state.queues)},
            "paused": {"queues": sorted(state.queues), "job_types": sorted(state.types)},
        }

    def schedules(self, scheduler: Scheduler) -> list[ScheduleInfo]:
        """The schedules registered in this process and those stored, as ``queue.schedules()`` has them."""
        registered = {s.name: s for s in scheduler.all()}
        control = self.store.control
        stored = self.once(control.schedule_states, "Reading the schedules")
        names = sorted(set(registered) | set(stored))
        fired = self.once(lambda: control.last_fired_jobs(names), "Reading the schedules' last jobs")
        specs = {name: state.spec for name, state in stored.items()}
        return schedule_infos(registered, specs, fired, self.store.now())
