"""Fire times of cron expressions and fixed intervals, in naive UTC, with DST handled as Debian cron does.

Cron expressions are parsed by cronsim (the ``cron`` extra). It was chosen
over croniter for its DST handling, which follows Debian cron: a job at a
fixed local time in the hour skipped in spring runs once at the end of the
gap, and one in the hour repeated in autumn runs once, where croniter 7
fires a daily ``30 1`` twice on the fall-back day. It also iterates
backwards, which finds the latest missed fire time in one step however long
the outage was, and is typed, dependency-free and BSD-licensed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Optional, Protocol

from ..errors import ScheduleError
from ..extras import extra_hint

__all__ = ["CronTimes", "FireTimes", "IntervalTimes"]

_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)
#: Guard on iterator steps that DST folds can make non-monotonic; a handful suffice.
_EXTRA_STEPS = 100
_SECOND = timedelta(seconds=1)
#: UTC offset changes of a timezone are assumed at least this far apart.
_PROBE = timedelta(days=7)
#: Stretches of constant UTC offset one search may cross (two a year in most zones).
_MAX_SEGMENTS = 200


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
            hint = f"{extra_hint('cron')} (fixed intervals with every_ms work without it)"
            raise ScheduleError(f"cron expressions need cronsim, {hint}") from exc
        self._cronsim = CronSim
        self.expression = expression
        self.tz = tz
        # A 5-field expression whose minute and hour fields name fixed local
        # times (values, ranges, lists) is iterated in wall-clock time, so
        # each fires once on DST days, as in Debian cron; one with a wildcard
        # or a step in either field (``*``, ``*/30``, ``0-59/30``) in real
        # time, through UTC: every matching instant. Debian decides by the
        # field's first character only, which makes ``0 0-23/1`` differ
        # from ``0 */1``; here both are steps.
        fields = expression.split()
        self._wall_clock = len(fields) == 5 and not any(c in "*/" for c in fields[0] + fields[1])
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


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)
