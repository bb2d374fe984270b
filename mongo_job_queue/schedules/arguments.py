"""What defining a schedule takes: the parameters of ``schedule()`` and ``periodic()``, written once.

:func:`schedule_arguments` is the one parameter list. The queue's
:meth:`~mongo_job_queue.PersistentJobQueue.schedule` and
:meth:`~mongo_job_queue.PersistentJobQueue.periodic`, and the Flask
extension's, are typed with it (:mod:`mongo_job_queue.forwarding`) and
hand it their arguments; :class:`~.manager.ScheduleManager` takes the result.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Optional, Union

from .definition import CatchUp

__all__ = ["HANDLER_OPTIONS", "ScheduleArguments", "schedule_arguments", "split_handler_options"]

Timezone = Union[str, tzinfo]

#: ``periodic()``'s keywords for the handler it registers, besides ``max_retries``, which serves both.
HANDLER_OPTIONS = ("stop", "wait", "retry")


@dataclass(frozen=True)
class ScheduleArguments:
    """One definition's arguments, bound and not yet validated (:meth:`.Schedule.create` does that)."""

    name: str
    cron: Optional[str]
    job_type: Optional[str]
    #: ``enqueue``'s arguments for each fire: ``data`` (a copy), ``queue``, ``priority``, ``max_retries``.
    job: Mapping[str, Any]
    #: The app's own fields for each job.
    extra_fields: Mapping[str, Any]
    #: :meth:`.Schedule.create`'s timing and catch-up keywords.
    when: Mapping[str, Any]


def schedule_arguments(
    name: str,
    cron_expression: Optional[str] = None,
    job_type: Optional[str] = None,
    data: Optional[Mapping[str, Any]] = None,
    *,
    every_ms: Optional[int] = None,
    timezone: Timezone = "UTC",
    catch_up: Union[CatchUp, str] = CatchUp.ONCE,
    catch_up_limit: int = 100,
    misfire_grace_ms: int = 60_000,
    overlap: bool = True,
    queue: str = "default",
    priority: int = 0,
    max_retries: Optional[int] = None,
    **extra_fields: Any,
) -> ScheduleArguments:
    """Bind a definition's arguments (documented at :meth:`~mongo_job_queue.PersistentJobQueue.schedule`)."""
    # A copy: the caller changing its dict later must not change future fires.
    job = {
        "data": {} if data is None else copy.deepcopy(data),
        "queue": queue,
        "priority": priority,
        "max_retries": max_retries,
    }
    when = {
        "every_ms": every_ms,
        "tz": timezone,
        "catch_up": catch_up,
        "catch_up_limit": catch_up_limit,
        "misfire_grace_ms": misfire_grace_ms,
        "overlap": overlap,
    }
    return ScheduleArguments(name, cron_expression, job_type, job, extra_fields, when)


def split_handler_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``periodic()``'s keywords: those of the schedule, and those of the handler (``max_retries`` in both)."""
    handler = {key: value for key, value in options.items() if key in HANDLER_OPTIONS or key == "max_retries"}
    schedule = {key: value for key, value in options.items() if key not in HANDLER_OPTIONS}
    return schedule, handler
