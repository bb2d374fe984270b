"""Schedule definitions and their fire times: cron expressions and fixed intervals.

A :class:`Schedule` is data: which job to enqueue, when, and what to do about
fire times missed while no worker ran. Fire times are computed here without
any database; :mod:`.scheduler` turns the due ones into jobs.

Cron expressions are parsed by cronsim (the ``cron`` extra). It was chosen
over croniter for its DST handling, which follows Debian cron: a job at a
fixed local time in the hour skipped in spring runs once at the end of the
gap, and one in the hour repeated in autumn runs once, where croniter 7
fires a daily ``30 1`` twice on the fall-back day. It also iterates
backwards, which finds the latest missed fire time in one step however long
the outage was, and is typed, dependency-free and BSD-licensed.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Optional, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ScheduleError

__all__ = ["CatchUp", "Due", "FireTimes", "Schedule", "describe"]

_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)
#: Shortest interval: each fire costs every firing process a few round trips.
MIN_EVERY_MS = 100
#: Longest interval, 366 days: fire times must stay far inside the dates
#: datetime can hold; cron expressions say "yearly" better anyway.
MAX_EVERY_MS = 366 * 24 * 3600 * 1000
#: Longest misfire grace, 366 days: it must fit a timedelta ("once" catches up without one).
MAX_MISFIRE_GRACE_MS = MAX_EVERY_MS
#: Most missed fire times one tick enqueues with "all": each is an insert.
MAX_CATCH_UP_LIMIT = 10_000
#: Guard on iterator steps that DST folds can make non-monotonic; a handful suffice.
_EXTRA_STEPS = 100
_SECOND = timedelta(seconds=1)
#: UTC offset changes of a timezone are assumed at least this far apart.
_PROBE = timedelta(days=7)
#: Stretches of constant UTC offset one search may cross (two a year in most zones).
_MAX_SEGMENTS = 200


class CatchUp(str, enum.Enum):
    """What a schedule does with fire times missed while no worker ran (or the database was down)."""

    #: Enqueue one job, for the most recent missed fire time (the default).
    ONCE = "once"
    #: Enqueue nothing for fire times older than ``misfire_grace_ms``.
    SKIP = "skip"
    #: Enqueue every missed fire time, oldest first, at most ``catch_up_limit`` (the most recent).
    ALL = "all"

    def __str__(self) -> str:
        return self.value


class FireTimes(Protocol):
    """Fire times of a schedule, as naive UTC datetimes."""

    def after(self, moment: datetime) -> Optional[datetime]:
        """The first fire time strictly after ``moment``; None if there is none."""

    def newest(self, after: Optional[datetime], until: datetime, limit: int) -> list[datetime]:
        """Up to ``limit`` most recent fire times in ``(after, until]``, oldest first."""


class CronTimes:
    """Fire times of a cron expression in a timezone (5 fields, or 6 with seconds first)."""

    def __init__(self, expression: str, tz: tzinfo) -> None:
        try:
            from cronsim import CronSim, CronSimError
        except ImportError as exc:
            raise ScheduleError(
                "cron expressions need the cron extra: pip install 'mongo-job-queue[cron]' "
                "(fixed intervals with every_ms work without it)"
            ) from exc
        self._cronsim = CronSim
        self.expression = expression
        self.tz = tz
        # cronsim's Debian rule: a 5-field expression with a fixed minute and
        # hour is iterated in naive wall-clock time (so a fixed local time
        # fires once on DST days); any other in real time, through UTC.
        fields = expression.split()
        self._wall_clock = len(fields) == 5 and not fields[0].startswith("*") and not fields[1].startswith("*")
        try:
            first = next(CronSim(expression, datetime.now(tz)))
        except CronSimError as exc:
            raise ScheduleError(f"invalid cron expression {expression!r}: {exc}") from exc
        except StopIteration:
            first = None
        if first is None:
            raise ScheduleError(f"cron expression {expression!r} never fires")

    def _local(self, moment: datetime) -> datetime:
        return moment.replace(tzinfo=timezone.utc).astimezone(self.tz)

    def _offset(self, moment: datetime) -> Optional[timedelta]:
        return self._local(moment).utcoffset()

    def after(self, moment: datetime) -> Optional[datetime]:
        base = moment.replace(microsecond=0) + _SECOND  # fire times are whole seconds
        for fire in itertools.islice(self._fires(base, forward=True), _EXTRA_STEPS):
            if fire >= base:
                return fire
        return None

    def newest(self, after: Optional[datetime], until: datetime, limit: int) -> list[datetime]:
        # Backwards from ``until``: one step finds the latest fire time
        # however long ago ``after`` was.
        base = until.replace(microsecond=0)
        fires: list[datetime] = []
        for fire in itertools.islice(self._fires(base, forward=False), limit + _EXTRA_STEPS):
            if len(fires) >= limit:
                break
            if fire > base:
                continue
            if after is not None and fire <= after:
                break
            if not fires or fire < fires[-1]:
                fires.append(fire)
        fires.reverse()
        return fires

    def _fires(self, base: datetime, *, forward: bool) -> Iterator[datetime]:
        """Fire times from ``base`` (included) onwards or backwards, as naive UTC.

        The wall-clock iteration may also yield a few beyond ``base`` in the
        other direction (DST folds); the callers skip them.
        """
        if not self._wall_clock:
            yield from self._real_time(base, forward)
            return
        if forward:
            it = self._cronsim(self.expression, self._local(base - _SECOND))
        else:
            # One second later because cronsim first steps back a second
            # from its start. Added in UTC: local-time arithmetic resets
            # ``fold``, which in the repeated hour of autumn would start the
            # search at the first pass, an hour early.
            start = self._local(base + _SECOND)
            if start.fold:
                # Wall-clock iteration drops the fold: start from the same
                # wall time one shift later, past the end of the first pass,
                # whose fire times are all before ``base``.
                start += start.replace(fold=0).utcoffset() - start.utcoffset()  # type: ignore[operator]
            it = self._cronsim(self.expression, start, reverse=True)
        for local in it:
            yield _naive_utc(local)

    def _real_time(self, base: datetime, forward: bool) -> Iterator[datetime]:
        # cronsim steps minutes and hours in wall-clock units applied in UTC,
        # exact only while the UTC offset stays the same: across a 30-minute
        # shift (Australia/Lord_Howe) it steps over fire times. So each
        # stretch of constant offset is searched with that fixed offset.
        step = _SECOND if forward else -_SECOND
        for _ in range(_MAX_SEGMENTS):
            offset = self._offset(base)
            start = (base - step).replace(tzinfo=timezone.utc).astimezone(timezone(offset or timedelta(0)))
            near = base
            for local in self._cronsim(self.expression, start, reverse=not forward):
                fire = _naive_utc(local)
                edge = self._edge(near, fire, offset)
                if edge is not None:
                    base = edge  # ``fire`` lies past an offset change: search on from it
                    break
                near = fire
                yield fire
            else:
                return

    def _edge(self, near: datetime, far: datetime, offset: Optional[timedelta]) -> Optional[datetime]:
        """None if the UTC offset stays ``offset`` from ``near`` to ``far``; else the first second where it changes.

        zoneinfo lists no transitions, so they are found by probing (weekly:
        offset changes are further apart) and bisecting to the second.
        """
        direction = 1 if far >= near else -1
        while True:
            probe = far if abs(far - near) <= _PROBE else near + direction * _PROBE
            if self._offset(probe) != offset:
                break
            if probe == far:
                return None
            near = probe
        span = int((probe - near).total_seconds())
        while abs(span) > 1:
            middle = near + timedelta(seconds=span // 2)
            if self._offset(middle) == offset:
                near = middle
            else:
                probe = middle
            span = int((probe - near).total_seconds())
        return probe


class IntervalTimes:
    """Every ``every_ms`` milliseconds, counted from the Unix epoch (UTC).

    Counting from a fixed origin, not from process start, is what lets every
    process agree on the fire times with no coordination.
    """

    def __init__(self, every_ms: int) -> None:
        self.every_ms = every_ms

    def _index(self, moment: datetime) -> int:
        return ((moment - _EPOCH) // _MS) // self.every_ms

    def _time(self, index: int) -> datetime:
        return _EPOCH + index * self.every_ms * _MS

    def after(self, moment: datetime) -> Optional[datetime]:
        return self._time(self._index(moment) + 1)

    def newest(self, after: Optional[datetime], until: datetime, limit: int) -> list[datetime]:
        last = self._index(until)
        first = last - limit + 1
        if after is not None:
            first = max(first, self._index(after) + 1)
        return [self._time(i) for i in range(first, last + 1)]


@dataclass(frozen=True)
class Due:
    """The outcome of checking a schedule: fire times to enqueue and how far the schedule got."""

    fires: list[datetime]
    #: The new "last handled fire time" to store, or None if nothing was due.
    handled: Optional[datetime]


@dataclass(frozen=True)
class Schedule:
    """A named, recurring job: a cron expression or a fixed interval, and the job to enqueue.

    Build schedules with :meth:`~mongo_job_queue.PersistentJobQueue.schedule`
    or :meth:`~mongo_job_queue.PersistentJobQueue.periodic`, which validate
    the job too.
    """

    name: str
    job_type: str
    cron: Optional[str]
    every_ms: Optional[int]
    #: IANA name of the timezone cron expressions are read in.
    timezone: str
    catch_up: CatchUp
    catch_up_limit: int
    misfire_grace_ms: int
    #: False: a fire time is skipped while the schedule's previous job is unfinished.
    overlap: bool
    #: ``enqueue`` arguments: data, queue, priority, max_retries.
    job: Mapping[str, Any] = field(repr=False)
    #: The app's own fields for each job (tenant, organization).
    extra_fields: Mapping[str, Any] = field(repr=False)
    times: FireTimes = field(repr=False, compare=False)

    @classmethod
    def create(
        cls,
        name: Any,
        cron: Any,
        job_type: Any,
        *,
        every_ms: Any,
        tz: Any,
        catch_up: Any,
        catch_up_limit: Any,
        misfire_grace_ms: Any,
        job: Mapping[str, Any],
        extra_fields: Mapping[str, Any],
        overlap: Any = True,
    ) -> Schedule:
        """Validate a definition; raise :class:`~mongo_job_queue.ScheduleError` naming what is wrong."""
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ScheduleError(f"schedule name must be a non-empty str of at most 200 characters, got {name!r:.80}")
        if not isinstance(job_type, str) or not job_type:
            raise ScheduleError(f"schedule {name!r}: job_type must be a non-empty str, got {job_type!r}")
        if (cron is None) == (every_ms is None):
            raise ScheduleError(f"schedule {name!r}: pass a cron expression or every_ms, exactly one")
        zone, zone_name = _zone(name, tz)
        times: FireTimes
        if cron is not None:
            if not isinstance(cron, str) or not cron.strip():
                raise ScheduleError(f"schedule {name!r}: the cron expression must be a non-empty str, got {cron!r}")
            cron = " ".join(cron.split())
            times = CronTimes(cron, zone)
        else:
            longer = "use a cron expression for longer periods"
            _bounded_int(name, "every_ms", every_ms, MIN_EVERY_MS, MAX_EVERY_MS, longer)
            if zone_name != "UTC":
                raise ScheduleError(f"schedule {name!r}: timezone applies to cron expressions, not to every_ms")
            times = IntervalTimes(every_ms)
        try:
            policy = CatchUp(catch_up)
        except ValueError:
            choices = ", ".join(repr(c.value) for c in CatchUp)
            raise ScheduleError(f"schedule {name!r}: catch_up must be one of {choices}, got {catch_up!r}") from None
        _bounded_int(name, "catch_up_limit", catch_up_limit, 1, MAX_CATCH_UP_LIMIT, "older fire times are skipped")
        grace_hint = 'catch_up="once" enqueues the latest missed fire time however late'
        _bounded_int(name, "misfire_grace_ms", misfire_grace_ms, 1, MAX_MISFIRE_GRACE_MS, grace_hint)
        if not isinstance(overlap, bool):
            raise ScheduleError(f"schedule {name!r}: overlap must be True or False, got {overlap!r}")
        return cls(
            name=name,
            job_type=job_type,
            cron=cron,
            every_ms=every_ms,
            timezone=zone_name,
            catch_up=policy,
            catch_up_limit=catch_up_limit,
            misfire_grace_ms=misfire_grace_ms,
            overlap=overlap,
            job=dict(job),
            extra_fields=dict(extra_fields),
            times=times,
        )

    @property
    def fingerprint(self) -> str:
        """Identifies *when* the schedule fires; a changed one starts afresh, without catch-up."""
        when = {"cron": self.cron, "every_ms": self.every_ms, "timezone": self.timezone}
        return hashlib.sha1(json.dumps(when, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def spec(self) -> dict[str, Any]:
        """The definition as stored beside the schedule's state, for listings from any process."""
        return {
            "job_type": self.job_type,
            "cron": self.cron,
            "every_ms": self.every_ms,
            "timezone": self.timezone,
            "catch_up": self.catch_up.value,
            "overlap": self.overlap,
        }

    @property
    def overlap_key(self) -> Optional[str]:
        """The ``unique_key`` of this schedule's jobs when they must not overlap, else None."""
        return None if self.overlap else f"mjq-schedule:{self.name}"

    @property
    def when(self) -> str:
        """When it fires, in a few words."""
        return describe(self.spec)

    def next_fire(self, now: datetime) -> Optional[datetime]:
        """The first fire time after ``now`` (naive UTC)."""
        return self.times.after(now)

    def latest_fire(self, now: datetime) -> Optional[datetime]:
        """The most recent fire time at or before ``now``, or None."""
        fires = self.times.newest(None, now, 1)
        return fires[0] if fires else None

    def due(self, handled: datetime, now: datetime) -> Due:
        """Apply the catch-up policy to the fire times in ``(handled, now]``."""
        limit = self.catch_up_limit if self.catch_up is CatchUp.ALL else 1
        fires = self.times.newest(handled, now, limit)
        if not fires:
            return Due([], None)
        newest = fires[-1]
        if self.catch_up is CatchUp.SKIP and now - newest > self.misfire_grace_ms * _MS:
            return Due([], newest)
        return Due(fires, newest)


def describe(spec: Mapping[str, Any]) -> str:
    """When a stored schedule definition fires, in a few words: ``cron '0 3 * * *' in UTC``, ``every 60000 ms``."""
    if spec.get("cron"):
        return f"cron {spec['cron']!r} in {spec.get('timezone', 'UTC')}"
    if spec.get("every_ms"):
        return f"every {spec['every_ms']} ms"
    return "unknown"


def _zone(name: str, tz: Any) -> tuple[tzinfo, str]:
    if tz is None or tz == "UTC" or tz is timezone.utc:
        return timezone.utc, "UTC"
    if isinstance(tz, ZoneInfo):
        return tz, tz.key
    if isinstance(tz, str):
        try:
            return ZoneInfo(tz), tz
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(f"schedule {name!r}: unknown timezone {tz!r}") from exc
    raise ScheduleError(
        f"schedule {name!r}: timezone must be an IANA name such as 'Europe/Paris' or a ZoneInfo, got {tz!r}"
    )


def _bounded_int(name: str, key: str, value: Any, minimum: int, maximum: int, hint: str) -> None:
    """Reject at definition what would fail every tick later (a timedelta overflow, a huge loop)."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ScheduleError(
            f"schedule {name!r}: {key} must be an int from {minimum} to {maximum}, got {value!r:.40}; {hint}"
        )


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)
