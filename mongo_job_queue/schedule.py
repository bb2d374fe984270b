"""Deprecated path: schedule definitions are in :mod:`mongo_job_queue.schedules.definition`.

Importing a name from here still works, with a DeprecationWarning; the
public ones (``Schedule``, ``CatchUp``) are exported by :mod:`mongo_job_queue`.
"""

from __future__ import annotations

from typing import Any

from .schedules._moved import moved_attribute

_DEFINED = ("CatchUp", "Due", "Schedule", "describe")
_LIMITS = ("MIN_EVERY_MS", "MAX_EVERY_MS", "MAX_MISFIRE_GRACE_MS", "MAX_CATCH_UP_LIMIT")
_MOVED = dict.fromkeys(_DEFINED + _LIMITS, "mongo_job_queue.schedules.definition") | dict.fromkeys(
    ("CronTimes", "FireTimes", "IntervalTimes"), "mongo_job_queue.schedules.fire_times"
)


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, name, _MOVED)
