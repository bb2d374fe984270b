"""Schedule definitions: which job to enqueue, when, and what to do about missed fire times.

A :class:`Schedule` is data, validated once when it is defined. It answers
"which fire times are due" without any database; :mod:`.service` turns the
due ones into jobs, and the fire times themselves come from
:mod:`.fire_times` (cron via cronsim, DST as Debian cron).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ScheduleError
from .fire_times import CronTimes, FireTimes, IntervalTimes

__all__ = ["CatchUp", "Due", "Schedule", "describe"]

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
    def _when(self) -> dict[str, Any]:
        return {"cron": self.cron, "every_ms": self.every_ms, "timezone": self.timezone}

    @property
    def fingerprint(self) -> str:
        """Identifies *when* the schedule fires; a changed one starts afresh, without catch-up."""
        return hashlib.sha1(json.dumps(self._when, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def spec(self) -> dict[str, Any]:
        """The definition as stored beside the schedule's state, for listings from any process."""
        return {"job_type": self.job_type, **self._when, "catch_up": self.catch_up.value, "overlap": self.overlap}

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
