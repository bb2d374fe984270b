"""Deprecated path: the queue's schedules are in :mod:`mongo_job_queue.schedules.manager`.

Importing a name from here still works, with a DeprecationWarning;
``ScheduleInfo`` is exported by :mod:`mongo_job_queue`.
"""

from __future__ import annotations

from typing import Any

from .schedules._moved import moved_attribute

_MOVED = {
    "ScheduleInfo": "mongo_job_queue.schedules.manager",
    **dict.fromkeys(("CatchUp", "Schedule", "describe"), "mongo_job_queue.schedules.definition"),
    **dict.fromkeys(("Fire", "Scheduler"), "mongo_job_queue.schedules.service"),
}


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, name, _MOVED)
