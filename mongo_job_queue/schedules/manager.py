"""The queue's schedules: defining them, listing them, and firing them one step at a time.

:class:`~mongo_job_queue.PersistentJobQueue` delegates its schedule methods
here (they are documented there). The guarantees (one job per fire time
across processes, catch-up) come from :mod:`.service` and the store; the
jobs themselves are built and inserted by :mod:`mongo_job_queue.enqueue`,
as every other job is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Optional, TypeVar

from bson import ObjectId

from ..clock import utcnow
from ..enqueue import Enqueuer
from ..handlers import HandlerFn, HandlerRegistry
from ..store import JobStore
from ..worker import Worker
from .arguments import ScheduleArguments, schedule_arguments, split_handler_options
from .definition import Schedule, describe
from .service import Fire, Scheduler

__all__ = ["ScheduleInfo", "ScheduleManager", "schedule_infos"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=HandlerFn)


@dataclass(frozen=True)
class ScheduleInfo:
    """One schedule as :meth:`~mongo_job_queue.PersistentJobQueue.schedules` lists it. Times are naive UTC."""

    name: str
    job_type: Optional[str]
    #: When it fires, in words: ``cron '0 3 * * *' in Europe/Paris`` or ``every 60000 ms``.
    when: str
    #: Registered in this process; False for a schedule known only from the database
    #: (removed from the code, or registered by other processes only): it does not fire from here.
    registered: bool
    #: The next fire time; None when not registered here.
    next_fire: Optional[datetime]
    #: The fire time of the schedule's latest job still stored (retention removes old ones).
    last_fire: Optional[datetime]
    last_job_id: Optional[ObjectId]
    last_status: Optional[str]


@dataclass(eq=False)
class ScheduleManager:
    """The schedules of one queue: its :class:`Scheduler`, and the jobs its fire times enqueue."""

    store: JobStore
    worker: Worker
    enqueuer: Enqueuer[Any]
    #: Where ``periodic()`` registers its handler.
    registry: HandlerRegistry
    #: Called before a fire outside the worker: the queue ensures its indexes once.
    prepare: Callable[[], None]

    @property
    def scheduler(self) -> Scheduler:
        """The service, created on first use and kept by the worker, whose thread runs it."""
        if self.worker.scheduler is None:
            self.worker.scheduler = Scheduler(self.store, self._enqueue_fire, logger=None)
        return self.worker.scheduler

    def add(self, arguments: ScheduleArguments) -> Schedule:
        """Define and register a schedule (:func:`.arguments.schedule_arguments` bound the call)."""
        job, extra_fields, job_type = arguments.job, arguments.extra_fields, arguments.job_type
        built = Schedule.create(
            arguments.name, arguments.cron, job_type, job=job, extra_fields=extra_fields, **arguments.when
        )
        # The job is built and sealed now, as enqueue would, so a bad payload or
        # field fails here and not in a background thread at the first fire.
        # The local clock: defining a schedule must not touch the database.
        # Built as a fire builds it (schedule, fire_time, the overlap key), so
        # what is measured is what every fire will write.
        now = utcnow()
        builder = self.enqueuer.builder
        spec = {**job, "job_type": job_type, "run_at": now, "unique_key": built.overlap_key}
        builder.seal(builder.build(spec, extra_fields, now, schedule=built.name, fire_time=now))
        self.scheduler.add(built)
        self.worker.start_scheduler()  # a worker started before its first schedule
        return built

    def periodic(self, args: tuple[Any, ...], options: Mapping[str, Any]) -> Callable[[F], F]:
        """``periodic()``: at decoration, schedule the job and register the function as its handler, or neither."""
        schedule_options, handler_options = split_handler_options(options)

        def decorate(fn: F) -> F:
            arguments = schedule_arguments(*args, **schedule_options)
            job_type = arguments.name if arguments.job_type is None else arguments.job_type
            self.add(replace(arguments, job_type=job_type))
            try:
                self.registry.register(job_type, fn, **handler_options)
            except BaseException:
                self.remove(arguments.name)  # all or nothing
                raise
            return fn

        return decorate

    def remove(self, name: str) -> bool:
        return self.scheduler.remove(name)

    def infos(self) -> list[ScheduleInfo]:
        """Every schedule registered here or known from the database: one read of each collection."""
        registered = {s.name: s for s in self.scheduler.all()}
        states = self.store.control.schedule_states()
        names = sorted(set(registered) | set(states))
        specs = {name: state.spec for name, state in states.items()}
        return schedule_infos(registered, specs, self.store.control.last_fired_jobs(names), self.store.now())

    def fire(self, now: Optional[datetime]) -> list[Fire]:
        """One tick outside the worker's thread, at ``now`` (naive UTC) or the store's clock."""
        self.prepare()
        return self.scheduler.tick(now)

    def _enqueue_fire(self, schedule: Schedule, fire_time: datetime) -> Optional[ObjectId]:
        # The same path as enqueue (validation, middleware), plus the
        # (schedule, fire_time) pair whose unique index lets one process win.
        spec = {**schedule.job, "job_type": schedule.job_type, "run_at": fire_time, "unique_key": schedule.overlap_key}
        extra = schedule.extra_fields
        doc, holder = self.enqueuer.enqueue_fire(spec, extra, schedule=schedule.name, fire_time=fire_time)
        if holder is None:
            return ObjectId(doc["_id"])
        # Another process enqueued this fire time, or the previous run is unfinished.
        if holder.get("fire_time") != fire_time:
            log.info(
                "schedule %s: fire time %s UTC skipped, its job %s of %s is still %s (overlap=False)",
                schedule.name,
                fire_time,
                holder["_id"],
                holder.get("fire_time"),
                holder.get("status"),
                extra={"schedule": schedule.name},
            )
        return None


def schedule_infos(
    registered: Mapping[str, Schedule],
    specs: Mapping[str, Mapping[str, Any]],
    last_jobs: Mapping[str, Mapping[str, Any]],
    now: datetime,
) -> list[ScheduleInfo]:
    """The schedules registered here and those stored (their specs), with each one's last fired job, by name."""
    infos = []
    for name in sorted(set(registered) | set(specs)):
        schedule = registered.get(name)
        spec = specs.get(name) or {}
        latest = last_jobs.get(name) or {}
        infos.append(
            ScheduleInfo(
                name=name,
                job_type=schedule.job_type if schedule is not None else spec.get("job_type"),
                when=schedule.when if schedule is not None else describe(spec),
                registered=schedule is not None,
                next_fire=schedule.next_fire(now) if schedule is not None else None,
                last_fire=latest.get("fire_time"),
                last_job_id=latest.get("_id"),
                last_status=latest.get("status"),
            )
        )
    return infos
