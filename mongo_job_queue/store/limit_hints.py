"""Limit hints: an optional fast pre-check of limiters (e.g. in Redis) that spares the claim MongoDB round trips.

The :class:`~.limiter.Limiter` consults its hints before it pays for an
admission: it skips the ``$push`` into a limiter known to be full, and the
GCRA read and compare-and-set of a rate known to be closed until some time.
It tells them what MongoDB answered (a refused or filling push, a rate's
next start, a release). A hint never admits: MongoDB's conditional update
stays the only admission, so a hint that lies can delay a job (by at most
its time to live) or cost the round trips of a claim without hints, never
overshoot a cap or a rate, lose a job or use an attempt.
:class:`NoHints` is the default: nothing is asked, nothing kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Optional, Protocol

from ..limits import Limit

__all__ = ["NO_HINTS", "Hint", "HintSource", "LimitHints", "NoHints", "next_open", "pre_check", "tell_start"]

#: Taken off a rate's next start, against the rounding of the stored state (a hint is a lower bound).
_ROUNDING = timedelta(milliseconds=1)


class Hint(NamedTuple):
    """What the hints tell of one limiter: known full, and when its rate opens at the earliest."""

    full: bool = False
    opens_at: Optional[datetime] = None


class LimitHints(Protocol):
    """The claim's side of the hints; every method is quick and never raises (it answers nothing instead)."""

    def look(self, ids: Sequence[str], now: datetime) -> Mapping[str, Hint]:
        """The hints known of these limiters (a limiter left out: nothing known)."""

    def saw_full(self, ids: Sequence[str], now: datetime) -> None:
        """MongoDB just found (or made) these limiters full, at ``now`` or after."""

    def saw_rate(self, lid: str, opens_at: datetime, now: datetime) -> None:
        """The rate of limiter ``lid`` gives no start before ``opens_at`` (a lower bound from MongoDB's state)."""

    def freed(self, ids: Sequence[str], now: datetime) -> None:
        """A run left these limiters by ``now``: they may have room."""


class HintSource(Protocol):
    """What ``queue.add_limit_hints()`` takes: it binds the hints to one jobs collection and its lease."""

    def bind(self, namespace: str, lease_ms: int) -> LimitHints:
        """Hints for the limiters of ``namespace`` (``<database>.<jobs collection>/<id>``), kept at most ``lease_ms``.

        The id is the jobs collection's own random one (``store.control.instance_id()``): a namesake on another
        deployment has another.
        """


class NoHints:
    """The default: nothing known, so every admission asks MongoDB (the behaviour without hints)."""

    def look(self, ids: Sequence[str], now: datetime) -> Mapping[str, Hint]:
        return {}

    def saw_full(self, ids: Sequence[str], now: datetime) -> None:
        pass

    def saw_rate(self, lid: str, opens_at: datetime, now: datetime) -> None:
        pass

    def freed(self, ids: Sequence[str], now: datetime) -> None:
        pass


NO_HINTS: LimitHints = NoHints()


def next_open(limit: Limit, start: datetime) -> Optional[datetime]:
    """The earliest next start of ``limit``'s rate once ``start`` was spent; None when that tells nothing.

    Spending a start moves the GCRA's ``tat`` to at least ``start`` plus one
    interval, and a start is allowed from ``tat`` less the burst tolerance
    (``burst - 1`` intervals): so a burst of 1 opens one interval later, a
    larger burst may open at once (no hint).
    """
    rate = limit.rate_ms
    if rate is None or limit.burst > 1:
        return None
    return start + timedelta(milliseconds=rate[1] / rate[0]) - _ROUNDING


def pre_check(
    hints: LimitHints, covering: Sequence[tuple[Limit, Any]], ids: Sequence[str], now: datetime
) -> Mapping[str, Hint]:
    """The hints of a job's limiters that have a cap or a rate (a fair turn has nothing to skip)."""
    if hints is NO_HINTS:
        return {}
    checked = [lid for (limit, _), lid in zip(covering, ids, strict=True) if limit.max_running or limit.rate]
    return hints.look(checked, now) if checked else {}


def tell_start(hints: LimitHints, lid: str, limit: Limit, start: datetime, now: datetime) -> None:
    """MongoDB gave ``start`` (or the last start of a reservation): the rate opens no earlier than after it."""
    opens = next_open(limit, start)
    if opens is not None and opens > now:
        hints.saw_rate(lid, opens, now)
