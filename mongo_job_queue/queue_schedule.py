"""The queue facade's schedules: cron and interval jobs, their listing, and the single step.

A mixin of :class:`~mongo_job_queue.PersistentJobQueue`, split from
:mod:`.queue` for size; the methods are documented there as its own. The
guarantees (one job per fire time across processes, catch-up) come from
:mod:`.scheduler` and :mod:`.store.control`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar, Union

from bson import ObjectId

from .clock import to_naive_utc, utcnow
from .handlers import HandlerFn
from .model import BaseJob
from .retry import RetryStrategy, StopStrategy, WaitStrategy
from .schedule import CatchUp, Schedule, describe
from .scheduler import Fire, Scheduler

if TYPE_CHECKING:
    from .handlers import HandlerRegistry
    from .middleware import MiddlewareChain
    from .store import JobStore
    from .worker import Worker

__all__ = ["ScheduleInfo", "ScheduleMixin"]

log = logging.getLogger(__name__)

J = TypeVar("J", bound=BaseJob)
F = TypeVar("F", bound=HandlerFn)

Timezone = Union[str, tzinfo]


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


class ScheduleMixin(Generic[J]):
    """Schedules of a queue."""

    if TYPE_CHECKING:
        store: JobStore
        worker: Worker
        registry: HandlerRegistry
        hooks: MiddlewareChain
        eager: bool
        _indexes_ensured: bool

        def _build(
            self, spec: Mapping[str, Any], extra: Mapping[str, Any], now: Optional[datetime] = None
        ) -> dict[str, Any]: ...
        def _announce(self, docs: list[dict[str, Any]]) -> None: ...
        def _aborted(self, docs: list[dict[str, Any]], exc: Optional[BaseException]) -> None: ...
        def _run_eagerly(self, docs: list[dict[str, Any]]) -> list[J]: ...
        def _wake_if_local(self, doc: Mapping[str, Any]) -> None: ...
        def ensure_indexes(self) -> None: ...
        def register_handler(
            self,
            job_type: str,
            fn: F,
            *,
            stop: Optional[StopStrategy] = None,
            wait: Optional[WaitStrategy] = None,
            retry: Optional[RetryStrategy] = None,
            max_retries: Optional[int] = None,
        ) -> F: ...

    @property
    def scheduler(self) -> Scheduler:
        """The schedules registered in this process (created on first use)."""
        if self.worker.scheduler is None:
            self.worker.scheduler = Scheduler(self.store, self._enqueue_fire, logger=None)
        return self.worker.scheduler

    def schedule(
        self,
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
    ) -> Schedule:
        """Enqueue ``job_type`` with ``data`` at every fire time of a cron expression or interval.

        Each fire time produces exactly one job however many processes run
        this schedule: every process with a running worker fires it, and the
        database keeps the first insert. No database access happens here.

        Args:
            name: Identifies the schedule across processes and deploys.
            cron_expression: Five fields (minute first), or six with seconds
                first; needs the ``cron`` extra. Exclusive with ``every_ms``.
            job_type: The job to enqueue; its handler may live in any process.
            data: The job's payload, the same at every fire time.
            every_ms: Fire every this many ms (at least 100), counted from the Unix epoch.
            timezone: IANA name (or ZoneInfo) the cron expression is read in;
                DST is handled as Debian cron does.
            catch_up: Fire times missed while no worker ran: ``"once"``
                enqueues the latest, ``"skip"`` none older than
                ``misfire_grace_ms``, ``"all"`` each, up to ``catch_up_limit``.
            catch_up_limit: With ``"all"``, the most missed fire times enqueued at once (at most 10,000).
            misfire_grace_ms: With ``"skip"``, how late a fire time may still be enqueued (at most 366 days).
            overlap: False skips a fire time while the schedule's previous
                job is still pending or running (through ``unique_key``), so
                runs never overlap.
            queue: Queue of the jobs.
            priority: Priority of the jobs.
            max_retries: Overrides the handler's and the config's default.
            **extra_fields: Values for the app's own fields.

        Raises:
            ScheduleError: bad name, expression, interval, timezone or policy,
                or a schedule of that name already registered.
            InvalidJobError: the job itself would be rejected by ``enqueue``.
        """
        # A copy: the caller changing its dict later must not change future fires.
        job = {
            "data": {} if data is None else copy.deepcopy(data),
            "queue": queue,
            "priority": priority,
            "max_retries": max_retries,
        }
        built = Schedule.create(
            name,
            cron_expression,
            job_type,
            every_ms=every_ms,
            tz=timezone,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            misfire_grace_ms=misfire_grace_ms,
            overlap=overlap,
            job=job,
            extra_fields=extra_fields,
        )
        # The job is built once now, as enqueue would, so a bad payload or
        # field fails here and not in a background thread at the first fire.
        # The local clock: defining a schedule must not touch the database.
        self._build({**job, "job_type": job_type}, extra_fields, now=utcnow())
        self.scheduler.add(built)
        self.worker.start_scheduler()  # a worker started before its first schedule
        return built

    def periodic(
        self,
        name: str,
        cron_expression: Optional[str] = None,
        *,
        job_type: Optional[str] = None,
        data: Optional[Mapping[str, Any]] = None,
        every_ms: Optional[int] = None,
        timezone: Timezone = "UTC",
        catch_up: Union[CatchUp, str] = CatchUp.ONCE,
        catch_up_limit: int = 100,
        misfire_grace_ms: int = 60_000,
        overlap: bool = True,
        queue: str = "default",
        priority: int = 0,
        max_retries: Optional[int] = None,
        stop: Optional[StopStrategy] = None,
        wait: Optional[WaitStrategy] = None,
        retry: Optional[RetryStrategy] = None,
        **extra_fields: Any,
    ) -> Callable[[F], F]:
        """Decorator: register the function as the handler of ``job_type`` (default: ``name``) and schedule it.

        Takes :meth:`schedule`'s arguments, plus the retry strategies of
        :meth:`register_handler`. Nothing is registered if either is invalid.
        """

        def decorate(fn: F) -> F:
            jt = name if job_type is None else job_type
            self.schedule(
                name, cron_expression, jt, data, every_ms=every_ms, timezone=timezone, catch_up=catch_up,
                catch_up_limit=catch_up_limit, misfire_grace_ms=misfire_grace_ms, overlap=overlap, queue=queue,
                priority=priority, max_retries=max_retries, **extra_fields,
            )  # fmt: skip
            try:
                self.register_handler(jt, fn, stop=stop, wait=wait, retry=retry, max_retries=max_retries)
            except BaseException:
                self.unschedule(name)  # all or nothing
                raise
            return fn

        return decorate

    def unschedule(self, name: str) -> bool:
        """Stop firing ``name`` from this process; False if it was not registered here.

        Other processes fire it until they unregister it too; removing the
        schedule from the code and deploying does that everywhere.
        """
        return self.scheduler.remove(name)

    def schedules(self) -> list[ScheduleInfo]:
        """The schedules registered here and those known from the database, with next and last fire times."""
        registered = {s.name: s for s in self.scheduler.all()}
        states = self.store.control.schedule_states()
        names = sorted(set(registered) | set(states))
        last = self.store.control.last_fired_jobs(names)
        now = self.store.now()
        infos = []
        for name in names:
            schedule = registered.get(name)
            spec = states[name].spec if name in states else {}
            latest = last.get(name) or {}
            job_type = schedule.job_type if schedule is not None else spec.get("job_type")
            when = schedule.when if schedule is not None else describe(spec)
            infos.append(
                ScheduleInfo(
                    name=name,
                    job_type=job_type,
                    when=when,
                    registered=schedule is not None,
                    next_fire=schedule.next_fire(now) if schedule is not None else None,
                    last_fire=latest.get("fire_time"),
                    last_job_id=latest.get("_id"),
                    last_status=latest.get("status"),
                )
            )
        return infos

    def fire_schedules(self, now: Optional[datetime] = None) -> list[Fire]:
        """Enqueue the jobs of every fire time due now; the deterministic single step for tests and scripts.

        ``now`` (aware, or naive UTC) replaces the clock, so a test can walk
        a schedule through time without waiting. A running worker does the
        same by itself at each fire time.
        """
        if not self._indexes_ensured:
            self.ensure_indexes()
        return self.scheduler.tick(None if now is None else to_naive_utc(now))

    def _enqueue_fire(self, schedule: Schedule, fire_time: datetime) -> Optional[ObjectId]:
        # The same path as enqueue (validation, middleware), plus the
        # (schedule, fire_time) pair whose unique index lets one process win.
        doc = self._build({**schedule.job, "job_type": schedule.job_type, "run_at": fire_time}, schedule.extra_fields)
        doc["schedule"] = schedule.name
        doc["fire_time"] = fire_time
        if schedule.overlap_key is not None:
            doc["unique_key"] = schedule.overlap_key
        self._announce([doc])
        try:
            holder = self.store.jobs.insert(doc)
        except BaseException as exc:
            self._aborted([doc], exc)
            raise
        if holder is not None:
            self._aborted([doc], None)  # another process enqueued this fire time, or the previous run is unfinished
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
        self.hooks.emit("after_enqueue", doc)
        if self.eager:
            self._run_eagerly([doc])
        else:
            self._wake_if_local(doc)
        return ObjectId(doc["_id"])
