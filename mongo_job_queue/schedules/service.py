"""The scheduler service: turning due fire times into jobs, in every process that runs a worker.

Every process with a running worker runs the same schedules (every gunicorn
worker of every host, every dedicated worker process). There is no leader:
at each fire time they all try, and the store's unique index on
``(schedule, fire_time)`` lets one insert through. So a schedule keeps firing
as long as any one process is up, and fires once however many are.

Between fire times the scheduler thread only sleeps: it reads the database
when a fire time has come, not on a polling interval, so idle workers pay
nothing for it. :meth:`Scheduler.step` is one turn of that thread at a given
``now``, and :meth:`Scheduler.tick` the deterministic single step that tests
and scripts call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

from bson import ObjectId

from ..errors import ScheduleError
from ..store import JobStore, ScheduleState
from .definition import Schedule

__all__ = ["Fire", "Scheduler"]

log = logging.getLogger(__name__)

#: Longest sleep between two looks at the clock; waking costs no database read.
_MAX_SLEEP_S = 60.0
_MAX_BACKOFF_S = 60.0

#: ``enqueue_fire(schedule, fire_time)``: the job's id if this call inserted it, None if it existed.
EnqueueFire = Callable[[Schedule, datetime], Optional[ObjectId]]


@dataclass(frozen=True)
class Fire:
    """One fire time handled by a tick."""

    schedule: str
    fire_time: datetime
    #: The new job's id, or None if another process (or an earlier tick) had enqueued it.
    job_id: Optional[ObjectId]

    @property
    def enqueued(self) -> bool:
        """Whether this tick inserted the job."""
        return self.job_id is not None


#: Shortest absence that makes a definition "coming back": covers late ticks of a fast schedule.
MIN_ABSENCE = timedelta(minutes=10)


def _superseded(schedule: Schedule, handled: datetime, state: ScheduleState) -> bool:
    """Whether this definition was really absent while another one fired: it comes back, its handled time stale.

    Another definition firing after this one's first unhandled fire time
    (``missed``) happens in a rolling deploy too, when this one's processes
    tick late (a pause, an outage both lived through). So the definition also
    has to have been unseen, when the other one fired, for longer than twice
    its own period (at least :data:`MIN_ABSENCE`): processes running it write
    ``seen`` at each of its fire times, so a live one is never that stale.
    """
    fingerprint = schedule.fingerprint
    others = [t for f, t in state.handled.items() if f != fingerprint and isinstance(t, datetime)]
    if not others:
        return False
    missed = schedule.next_fire(handled)
    if missed is None or missed > max(others):
        return False
    seen = state.seen.get(fingerprint)
    last_seen = max(handled, seen) if isinstance(seen, datetime) else handled
    return max(others) - last_seen > max(MIN_ABSENCE, 2 * (missed - handled))


def _backoff(failures: int) -> float:
    return min(_MAX_BACKOFF_S, 2.0**failures)


class Scheduler:
    """The schedules registered in this process, and the loop that fires them."""

    def __init__(self, store: JobStore, enqueue_fire: EnqueueFire, *, logger: Optional[logging.Logger] = None) -> None:
        self.store = store
        self.enqueue_fire = enqueue_fire
        self.log = logger or log
        self._schedules: dict[str, Schedule] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: Counters since start, for tests and diagnostics: fires enqueued here, and found enqueued.
        self.enqueued = 0
        self.duplicates = 0
        # The loop's backoff: failures of the whole tick in a row, and of each schedule.
        self._failures = 0
        self._held: dict[str, int] = {}
        self._retry_at: dict[str, datetime] = {}

    # -- registry -----------------------------------------------------------

    def add(self, schedule: Schedule) -> None:
        """Register a schedule; a running loop picks it up at once.

        Raises:
            ScheduleError: a schedule of that name is already registered.
        """
        with self._lock:
            if schedule.name in self._schedules:
                raise ScheduleError(f"a schedule named {schedule.name!r} is already registered")
            self._schedules[schedule.name] = schedule
        self._wake.set()

    def remove(self, name: str) -> bool:
        """Stop firing ``name`` in this process; False if it was not registered."""
        with self._lock:
            removed = self._schedules.pop(name, None) is not None
        self._wake.set()
        return removed

    def get(self, name: str) -> Optional[Schedule]:
        """The registered schedule of this name, or None."""
        with self._lock:
            return self._schedules.get(name)

    def all(self) -> list[Schedule]:
        """The registered schedules, by name."""
        with self._lock:
            return [self._schedules[n] for n in sorted(self._schedules)]

    # -- firing -------------------------------------------------------------

    def tick(self, now: Optional[datetime] = None) -> list[Fire]:
        """Enqueue the jobs of every fire time due at ``now`` (naive UTC; default: the store's clock).

        One read of the schedules' state, then for each schedule with due fire
        times, one insert per fire time and one state update. A definition
        seen for the first time starts from its latest fire time without
        enqueueing it: a new schedule first fires at its next fire time.

        Raises:
            Exception: the first schedule's failure, after every other
                schedule was fired; the failed ones' fire times stay due.
        """
        if not self._schedules:
            return []  # not even a look at the store's clock
        fires, failed = self._tick(self.store.now() if now is None else now)
        if failed:
            raise next(iter(failed.values()))
        return fires

    def _tick(self, now: datetime, skip: Collection[str] = ()) -> tuple[list[Fire], dict[str, Exception]]:
        schedules = [s for s in self.all() if s.name not in skip]
        if not schedules:
            return [], {}
        states = self.store.control.schedule_states([s.name for s in schedules])
        fires: list[Fire] = []
        failed: dict[str, Exception] = {}
        for schedule in schedules:
            # One schedule that cannot insert (a rejected job, a fault) must
            # not hold back the others; its fire times stay due.
            try:
                fires.extend(self._fire(schedule, states.get(schedule.name), now))
            except Exception as exc:
                failed[schedule.name] = exc
                self.log.exception(
                    "schedule %s failed; its due fire times stay due", schedule.name, extra={"schedule": schedule.name}
                )
        return fires, failed

    def _fire(self, schedule: Schedule, state: Optional[ScheduleState], now: datetime) -> list[Fire]:
        fingerprint = schedule.fingerprint
        handled = state.handled.get(fingerprint) if state is not None else None
        if handled is not None and state is not None and _superseded(schedule, handled, state):
            # A definition coming back (a rollback): the fire times another
            # definition covered meanwhile are not replayed.
            baseline = max(handled, schedule.latest_fire(now) or now)
            self.store.control.advance_schedule(schedule.name, fingerprint, baseline, schedule.spec, now)
            self.log.info(
                "schedule %s (%s) starts afresh: another definition fired while it was absent since %s UTC; "
                "next fire at %s UTC",
                schedule.name,
                schedule.when,
                handled,
                schedule.next_fire(max(baseline, now)),
                extra={"schedule": schedule.name},
            )
            return []
        if handled is None:
            baseline = schedule.latest_fire(now) or now
            handled = self.store.control.start_schedule(schedule.name, fingerprint, baseline, schedule.spec, now)
            self.log.info(
                "schedule %s (%s) starts: next fire at %s UTC",
                schedule.name,
                schedule.when,
                schedule.next_fire(max(handled, now)),
                extra={"schedule": schedule.name},
            )
        due = schedule.due(handled, now)
        if due.handled is None:
            return []
        if not due.fires:
            self.log.info(
                "schedule %s: skipped the fire time %s UTC, older than misfire_grace_ms (catch_up=skip)",
                schedule.name,
                due.handled,
                extra={"schedule": schedule.name},
            )
        fires = []
        for fire_time in due.fires:
            job_id = self.enqueue_fire(schedule, fire_time)
            fires.append(Fire(schedule.name, fire_time, job_id))
            if job_id is None:
                self.duplicates += 1
                self.log.debug("schedule %s: fire time %s already enqueued", schedule.name, fire_time)
            else:
                self.enqueued += 1
                self.log.info(
                    "schedule %s fired for %s UTC: job %s",
                    schedule.name,
                    fire_time,
                    job_id,
                    extra={"schedule": schedule.name, "job_id": str(job_id), "job_type": schedule.job_type},
                )
        # After the inserts: a crash in between leaves the fire time due for the next tick.
        self.store.control.advance_schedule(schedule.name, fingerprint, due.handled, schedule.spec, now)
        return fires

    def next_due(self, now: datetime) -> Optional[datetime]:
        """The earliest next fire time of the registered schedules, or None.

        A schedule whose next fire time cannot be computed is logged and left out.
        """
        return min(self._next_fires(now)[0].values(), default=None)

    def _next_fires(self, now: datetime, skip: Collection[str] = ()) -> tuple[dict[str, datetime], set[str]]:
        """Each schedule's next fire time, and the schedules whose next fire time cannot be computed."""
        times: dict[str, datetime] = {}
        failed: set[str] = set()
        for schedule in self.all():
            if schedule.name in skip:
                continue
            try:
                fire = schedule.next_fire(now)
            except Exception:
                failed.add(schedule.name)
                self.log.exception(
                    "schedule %s: its next fire time cannot be computed",
                    schedule.name,
                    extra={"schedule": schedule.name},
                )
                continue
            if fire is not None:
                times[schedule.name] = fire
        return times, failed

    def wake(self) -> None:
        """Make a running loop look again at once (schedules changed, or stopping)."""
        self._wake.set()

    def run(self, stopping: threading.Event) -> None:
        """Fire schedules until ``stopping`` is set; the body of the scheduler thread."""
        due_at: Optional[datetime] = None  # None: tick now (start, or schedules changed)
        announced: list[str] = []
        while not stopping.is_set():
            if self._wake.is_set():
                self._wake.clear()
                due_at = None
            names = [s.name for s in self.all()]
            if names != announced:
                announced = names
                described = ", ".join(f"{s.name} ({s.when})" for s in self.all()) or "none"
                self.log.info("firing schedules from this process: %s", described)
            now = self.store.now()
            if due_at is None or now >= due_at:
                due_at = self.step(now)
            # Wall-clock target, monotonic sleep: capped so a clock jump is noticed within a minute.
            self._wake.wait(min(_MAX_SLEEP_S, max(0.0, (due_at - now).total_seconds())))

    def step(self, now: datetime) -> datetime:
        """One turn of the scheduler thread at ``now``: fire what is due, and say when to look again.

        A schedule that fails (its insert, or computing its fire times) backs
        off alone, so the others keep their fire times; a failure of the whole
        tick (reading the state: the database is down) backs off all of them.
        """
        names = {s.name for s in self.all()}
        self._held = {n: c for n, c in self._held.items() if n in names}
        self._retry_at = {n: at for n, at in self._retry_at.items() if n in names}
        backing_off = {n for n, at in self._retry_at.items() if at > now}
        try:
            _, failed = self._tick(now, skip=backing_off)
        except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
            self._failures += 1
            backoff = _backoff(self._failures)
            self.log.warning("scheduler tick failed (%s: %s); trying again in %.0fs", type(exc).__name__, exc, backoff)
            upcoming = self._next_fires(now, skip=backing_off)[0].values()
            return min([now + timedelta(seconds=backoff), *upcoming])
        self._failures = 0
        times, unknown = self._next_fires(now, skip=backing_off)
        for name in sorted(names):
            if name in backing_off:
                times[name] = self._retry_at[name]
            elif name in failed or name in unknown:
                failures = self._held[name] = self._held.get(name, 0) + 1
                backoff = _backoff(failures)
                times[name] = self._retry_at[name] = now + timedelta(seconds=backoff)
                self.log.warning(
                    "schedule %s failed %d time(s) in a row; trying it again in %.0fs, the others on time",
                    name,
                    failures,
                    backoff,
                    extra={"schedule": name},
                )
            else:
                self._held.pop(name, None)
                self._retry_at.pop(name, None)
        return min(times.values(), default=datetime.max)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
