"""Deprecated path: the scheduler service is in :mod:`mongo_job_queue.schedules.service`.

Importing a name from here still works, with a DeprecationWarning; ``Fire``
is exported by :mod:`mongo_job_queue`.
"""

from __future__ import annotations

from typing import Any

from .schedules._moved import moved_attribute

_MOVED = {
    **dict.fromkeys(("EnqueueFire", "Fire", "MIN_ABSENCE", "Scheduler"), "mongo_job_queue.schedules.service"),
    "Schedule": "mongo_job_queue.schedules.definition",
}


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, name, _MOVED)
