"""Argument types of the command line: each turns one option's text into a value or a usage error.

An ``argparse.ArgumentTypeError`` becomes argparse's one-line usage error
and exit code 2, so a bad value never reaches the queue.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any, TypeVar, Union

from ..store.listing import EARLIEST_ID_TIME, LATEST_ID_TIME

__all__ = [
    "UNIT_MS",
    "ago",
    "csv_names",
    "field_equals",
    "grace_seconds",
    "json_object",
    "log_level",
    "parse_duration_ms",
    "port",
    "positive_int",
    "since",
    "status_names",
    "timeout_seconds",
]

UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)?$")
_T = TypeVar("_T")


def csv_names(value: str) -> list[str]:
    """``a,b`` as ``["a", "b"]``; at least one name."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names


def _parsed(convert: Callable[[str], _T], value: str, expected: str) -> _T:
    try:
        return convert(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None


def positive_int(value: str) -> int:
    number = _parsed(int, value, "an integer")
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _seconds(value: str) -> float:
    number = _parsed(float, value, "a number of seconds")
    if math.isnan(number):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}")
    return number


def grace_seconds(value: str) -> float:
    """Seconds >= 0, or ``inf``: wait as long as it takes (passed on as ``math.inf``)."""
    number = _seconds(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or inf), got {value}")
    return number


def timeout_seconds(value: str) -> float:
    """A finite number of seconds > 0: a timeout that gives up, as its exit code says."""
    number = _seconds(value)
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return number


def parse_duration_ms(value: str) -> int:
    """``7d``, ``12h``, ``30m``, ``45s``, ``500ms`` or plain milliseconds, as milliseconds."""
    match = _DURATION.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 7d, 12h, 30m, 45s or 500ms, got {value!r}")
    return int(match.group(1)) * UNIT_MS[match.group(2) or "ms"]


def json_object(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


def log_level(value: str) -> int:
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown log level {value!r} (DEBUG, INFO, WARNING, ERROR)")
    return level


def port(value: str) -> int:
    number = _parsed(int, value, "a port number")
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {number}")
    return number


def status_names(allowed: Collection[str]) -> Callable[[str], list[str]]:
    """The type of a ``--status`` taking comma-separated names out of ``allowed``."""

    def parse(value: str) -> list[str]:
        names = csv_names(value)
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown status {unknown[0]!r} (one of {', '.join(allowed)})")
        return names

    return parse


def since(value: str) -> Union[int, datetime]:
    """``1h`` (that long ago, in milliseconds) or an ISO date and time (UTC unless it says otherwise).

    A date before 1970 (the first time a job id can hold) is 1970: every job.
    One after the last (2106) is a usage error. A duration is bounded where
    it meets the clock (:func:`ago`).
    """
    try:
        return parse_duration_ms(value)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 2h or 7d, or a date and time like 2026-05-01T10:00, got {value!r}"
        ) from None
    offset = moment.utcoffset()
    try:
        moment = moment if offset is None else (moment - offset).replace(tzinfo=None)
    except OverflowError:  # before year 1 or after 9999 in UTC
        moment = datetime.min if moment.year == 1 else datetime.max
    if moment > LATEST_ID_TIME:
        raise argparse.ArgumentTypeError(
            f"expected a date and time up to {LATEST_ID_TIME.isoformat()} UTC (the last a job id can hold), "
            f"got {value!r}"
        )
    return max(moment, EARLIEST_ID_TIME)


def ago(now: datetime, since_ms: int) -> datetime:
    """``since_ms`` before ``now`` (naive UTC); 1970 (every job) when that is earlier, however long the duration."""
    if since_ms >= (now - EARLIEST_ID_TIME) // timedelta(milliseconds=1):
        return EARLIEST_ID_TIME
    return now - timedelta(milliseconds=since_ms)


def field_equals(value: str) -> tuple[str, str]:
    """``NAME=VALUE``: a filter on one of the app's own fields."""
    name, sep, text = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name.strip(), text
