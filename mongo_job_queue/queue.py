"""The public facade: :class:`PersistentJobQueue` and :func:`create_job_queue`.

The queue object only wires components together: each public method
delegates to one of them, built here with its collaborators. Enqueues go
through :mod:`.enqueue`, reads and administration through
:mod:`.queue_admin`, schedules through :mod:`.schedules.manager`, and
running jobs through :mod:`.worker`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Any, Generic, Optional, TypeVar, Union

from bson import ObjectId

from .clock import Clock, to_naive_utc, utcnow
from .config import ConfigInput, QueueConfig, load_config
from .enqueue import Enqueuer, JobBuilder
from .errors import ConfigError, JobModelError, QueueStateError
from .handlers import HandlerFn, HandlerRegistry
from .middleware import Middleware, MiddlewareChain
from .model import BaseJob
from .queue_admin import QueueAdmin
from .retry import RetryStrategy, StopStrategy, WaitStrategy
from .schedules.definition import CatchUp, Schedule
from .schedules.manager import ScheduleInfo, ScheduleManager
from .schedules.service import Fire, Scheduler
from .status import FINISHED
from .store import JobStore
from .tasks import Task
from .worker import Worker
from .worker.runner import run_worker

__all__ = ["PersistentJobQueue", "create_job_queue"]

J = TypeVar("J", bound=BaseJob)
F = TypeVar("F", bound=HandlerFn)
R = TypeVar("R")

Timezone = Union[str, tzinfo]

_live_queues: weakref.WeakSet[PersistentJobQueue[Any]] = weakref.WeakSet()


class PersistentJobQueue(Generic[J]):
    """A MongoDB-backed job queue over the app's own job model.

    Build it with :func:`create_job_queue`. The same object enqueues (from
    request handlers) and, once :meth:`start_polling` is called, runs a worker
    pool in background threads of this process.
    """

    def __init__(
        self,
        job_model: type[J],
        *,
        logger: Optional[logging.Logger] = None,
        config: ConfigInput = None,
        clock: Clock = utcnow,
        sleep: Optional[Callable[[float], None]] = None,
        middleware: Optional[Iterable[Middleware]] = None,
    ) -> None:
        _check_model(job_model)
        self.job_model = job_model
        self.config: QueueConfig = load_config(config)
        self.clock = clock
        self.registry = HandlerRegistry()
        self.hooks = MiddlewareChain(self, middleware)
        self.store = JobStore(job_model, self.config, clock=clock, sleep=sleep, logger=logger)
        self.worker = Worker(self.store, self.registry, self.config, logger=logger, hooks=self.hooks)
        self._indexes_ensured = False
        self._builder = JobBuilder(job_model, self.config, self.registry)
        self._enqueuer = Enqueuer(self._builder, self.store, self.worker, self.hooks)
        self._admin = QueueAdmin(job_model, self.store, self.worker, self.hooks)
        self._schedules = ScheduleManager(self.store, self.worker, self._enqueuer, prepare=self._prepare)
        _live_queues.add(self)

    @property
    def eager(self) -> bool:
        """Testing hook (see :mod:`mongo_job_queue.testing`): when True, :meth:`enqueue`
        and :meth:`enqueue_many` run each new job of a registered type at once,
        in the calling thread, due or not, and return it in its new state.
        """
        return self._enqueuer.eager

    @eager.setter
    def eager(self, value: bool) -> None:
        self._enqueuer.eager = value

    @property
    def eager_propagate(self) -> bool:
        """With :attr:`eager`: raise :class:`~mongo_job_queue.errors.EagerJobFailed`
        when an eagerly run job did not complete, so a test sees the failure.
        """
        return self._enqueuer.eager_propagate

    @eager_propagate.setter
    def eager_propagate(self, value: bool) -> None:
        self._enqueuer.eager_propagate = value

    def add_middleware(self, middleware: Middleware) -> None:
        """Add lifecycle hooks after construction (e.g. by a Flask or Django integration)."""
        self.hooks.add(middleware)

    # -- handlers -----------------------------------------------------------

    def register_handler(
        self,
        job_type: str,
        fn: F,
        *,
        stop: Optional[StopStrategy] = None,
        wait: Optional[WaitStrategy] = None,
        retry: Optional[RetryStrategy] = None,
        max_retries: Optional[int] = None,
        time_limit_ms: Optional[int] = None,
    ) -> F:
        """Register ``fn(job)`` for ``job_type``, with optional tenacity retry strategies and a time limit.

        Args:
            job_type: The job type this handler runs.
            fn: Called with the app's job instance; its return value, if BSON
                encodable, is stored as ``result``.
            stop: tenacity stop strategy, e.g. ``stop_after_delay(3600)``; it can
                only shorten the retries allowed by ``max_retries``.
            wait: tenacity wait strategy replacing the exponential default.
            retry: tenacity retry predicate, e.g. ``retry_if_exception_type(IOError)``.
            max_retries: Default ``max_retries`` for jobs of this type enqueued
                through this queue object.
            time_limit_ms: How long one run may take; past it the handler
                gets :class:`~mongo_job_queue.JobTimeLimitExceeded` in its
                thread, and after ``time_limit_grace_ms`` more it is
                abandoned (see :ref:`time-limits`). ``0``: none; default: the
                config's ``default_time_limit_ms``. A job's own
                ``time_limit_ms`` overrides it.

        Raises:
            HandlerError: duplicate type, non-callable handler, invalid strategy or time limit.
        """
        self.registry.register(
            job_type, fn, stop=stop, wait=wait, retry=retry, max_retries=max_retries, time_limit_ms=time_limit_ms
        )
        return fn

    def handler(
        self,
        job_type: str,
        *,
        stop: Optional[StopStrategy] = None,
        wait: Optional[WaitStrategy] = None,
        retry: Optional[RetryStrategy] = None,
        max_retries: Optional[int] = None,
        time_limit_ms: Optional[int] = None,
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: F) -> F:
            return self.register_handler(
                job_type, fn, stop=stop, wait=wait, retry=retry, max_retries=max_retries, time_limit_ms=time_limit_ms
            )

        return decorate

    def task(self, job_type: str, **options: Any) -> Callable[[Callable[[J], R]], Task[J, R]]:
        """Decorator: register the function as :meth:`register_handler` does; return a :class:`~mongo_job_queue.Task`.

        ``send_email = queue.task("send_email", max_retries=5)(fn)``, then
        ``send_email.enqueue({"to": ...})``: the job type is written once,
        and calling ``send_email(job)`` runs ``fn`` directly.

        Args:
            job_type: The job type the function handles and the task enqueues.
            **options: :meth:`register_handler`'s: ``stop``, ``wait``,
                ``retry``, ``max_retries``, ``time_limit_ms``.

        Raises:
            HandlerError: as :meth:`register_handler`; TypeError for an unknown option.
        """

        def decorate(fn: Callable[[J], R]) -> Task[J, R]:
            self.register_handler(job_type, fn, **options)
            return Task(self, job_type, fn)

        return decorate

    # -- enqueue ------------------------------------------------------------

    def enqueue(
        self,
        job_type: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        run_at: Optional[datetime] = None,
        delay_ms: Optional[int] = None,
        priority: int = 0,
        queue: str = "default",
        max_retries: Optional[int] = None,
        time_limit_ms: Optional[int] = None,
        unique_key: Optional[str] = None,
        unique_for_ms: Optional[int] = None,
        **extra_fields: Any,
    ) -> J:
        """Validate and insert one job; return the saved instance of the app's model.

        Args:
            job_type: Handler key.
            data: The payload, a BSON-encodable dict.
            run_at: Earliest start (aware, or naive UTC). Exclusive with ``delay_ms``.
            delay_ms: Start no earlier than this many ms from now.
            priority: Higher runs first among due jobs.
            queue: Queue name; workers claim from the queues in their config.
            max_retries: Overrides the handler's and the config's default.
            time_limit_ms: This job's time limit, overriding the handler's and
                the config's default (``0``: none), stored with the job.
            unique_key: At most one unfinished job per key: if one exists,
                nothing is inserted and that job is returned instead, so
                concurrent enqueues of the same key produce one job.
            unique_for_ms: With ``unique_key``, keep the key reserved for this
                long after enqueue even once the job finished (the finished
                job is returned meanwhile).
            **extra_fields: Values for the app's own fields, validated by its Document.

        Raises:
            InvalidJobError: bad input, or with ``strict_types`` a type no
                handler is known for; nothing was written.
        """
        spec = {
            "job_type": job_type,
            "data": data,
            "run_at": run_at,
            "delay_ms": delay_ms,
            "priority": priority,
            "queue": queue,
            "max_retries": max_retries,
            "time_limit_ms": time_limit_ms,
            "unique_key": unique_key,
            "unique_for_ms": unique_for_ms,
        }
        return self._enqueuer.enqueue(spec, extra_fields)

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[J]:
        """Validate every job, then insert them all in one bulk write.

        Each mapping takes :meth:`enqueue`'s arguments by name (``job_type``
        required) plus the app's own fields. If any job is invalid, nothing is
        written and the error names its index.
        """
        return self._enqueuer.enqueue_many(jobs)

    # -- worker -------------------------------------------------------------

    def ensure_indexes(self) -> None:
        """Create and check the job model's indexes and the retention TTL indexes now.

        Never needed: the queue creates the model's indexes before its first
        use of the collection, in every process, and :meth:`start_polling`
        and :meth:`run_once` bring the TTL indexes up to date. Call it after
        changing indexes by hand, or to fail early at deploy time.

        Raises:
            IndexSetupError: a unique index the queue relies on cannot be created.
        """
        self.store.ensure_indexes()
        self._indexes_ensured = True

    def start_polling(self) -> None:
        """Start the background worker (poller, handler pool, heartbeat, maintenance); idempotent.

        During another thread's :meth:`stop` it waits for that stop to end, then starts.

        Raises:
            QueueStateError: no handler is registered, so the worker could claim nothing;
                or called during a stop from a thread that stop waits for (a
                handler, an ``on_worker_stop`` hook), where waiting would deadlock.
        """
        if self.worker.running:
            return
        if not len(self.registry):
            raise QueueStateError("start_polling() with no handler registered: register handlers first")
        self._prepare()
        problem = self.store.admin.write_concern_problem()
        if problem:
            logging.getLogger(__name__).warning("unsafe write concern: %s", problem)
        self.worker.start()

    def stop(
        self,
        timeout: Optional[float] = 30.0,
        *,
        requeue_running: bool = False,
        force: Optional[threading.Event] = None,
    ) -> bool:
        """Stop gracefully; True if every running job (and every worker thread) finished within ``timeout``.

        Args:
            timeout: Seconds running jobs get to finish; ``None`` or
                ``math.inf`` waits until they do.
            requeue_running: False (an app stopping its in-process worker):
                jobs still running at the timeout keep their lease while the
                process lives. True (a process about to exit): they go back to
                the queue, attempt counted, when the process exits, never
                while their handler still runs in it.
            force: Stop waiting as soon as this event is set (a second signal).
        """
        return self.worker.stop(timeout, requeue_running=requeue_running, force=force)

    def run_worker(
        self,
        *,
        stop_timeout: Optional[float] = 30.0,
        install_signal_handlers: bool = True,
        until: Optional[Callable[[], bool]] = None,
    ) -> int:
        """Run the worker in the foreground until SIGTERM/SIGINT; return an exit code.

        See :func:`mongo_job_queue.runner.run_worker`: a first signal stops
        gracefully within ``stop_timeout``, then returns jobs still running to
        the queue (attempt counted); a second signal skips the wait.
        """
        return run_worker(self, stop_timeout=stop_timeout, install_signal_handlers=install_signal_handlers, until=until)

    @property
    def running(self) -> bool:
        """Whether the background worker is running in this process (started, and its threads alive)."""
        return self.worker.running

    def configure_worker(
        self,
        *,
        job_types: Optional[Iterable[str]] = None,
        wrap: Optional[Callable[[HandlerFn], HandlerFn]] = None,
        **config: Any,
    ) -> None:
        """Adjust this process's worker before it starts; used by the CLI and the framework integrations.

        A command line option (``--concurrency``, ``--queues``, ``--job-types``)
        overrides what the app module configured, without a second queue object.

        Args:
            job_types: Claim only these registered types in this process; the
                others stay registered for enqueue defaults. With ``wrap``,
                a snapshot: handlers registered afterwards are not claimed.
            wrap: Applied to each handler function the worker calls, e.g. to
                count finished jobs.
            **config: :class:`~mongo_job_queue.QueueConfig` keys to replace.

        Raises:
            QueueStateError: the worker is running.
            ConfigError: an unknown key or an invalid value.
            HandlerError: a job type that has no handler.
        """
        if self.worker.running:
            raise QueueStateError("configure_worker() while the worker is running: stop it first")
        if config:
            try:
                new_config = dataclasses.replace(self.config, **config)
            except TypeError as exc:
                raise ConfigError(f"unknown config key in {sorted(config)}: {exc}") from exc
            self.config = self.store.config = self._builder.config = new_config
            # The lease owner may name a new worker_id; runs still finishing
            # after a timed-out stop keep their heartbeat.
            self.worker.reconfigure(new_config)
        if job_types is not None or wrap is not None:
            self.worker.registry = self.registry.subset(job_types, wrap=wrap)

    def run_once(self) -> Optional[J]:
        """Claim one due job and run it in the calling thread; return it in its new state.

        Deterministic single step for tests and scripts (no threads, no heartbeat,
        so keep handlers shorter than ``lease_ms``). Returns None when nothing is due.
        """
        self._prepare()
        claimed = self.worker.claim_one()
        if claimed is None:
            return None
        self.worker.process(claimed)
        return self.get_job(claimed.id)

    def drain(self, max_jobs: Optional[int] = None) -> int:
        """Run due jobs with :meth:`run_once` until none is due (or ``max_jobs``); return how many ran."""
        ran = 0
        while max_jobs is None or ran < max_jobs:
            if self.run_once() is None:
                break
            ran += 1
        return ran

    def recover_orphans(self) -> tuple[int, int]:
        """Return jobs with expired leases to the queue now; ``(requeued, failed)``."""
        return self.worker.recover_orphans()

    # -- reads and administration ---------------------------------------------

    def get_job(self, job_id: ObjectId | str) -> Optional[J]:
        """The job with this id, freshly read, or None.

        Raises:
            InvalidJobIdError: ``job_id`` is not an ObjectId or its 24-hex-digit string.
        """
        return self._admin.get_job(job_id)

    def wait(self, job_id: ObjectId | str, timeout: Optional[float] = 30.0) -> Optional[J]:
        """Wait until the job is finished (completed, failed or cancelled) and return it; None if there is no such job.

        Polls by ``_id`` with backoff from 50 ms to 1 s, so a waiting caller
        costs at most about one indexed read per second. ``timeout`` is in
        seconds; None (or ``math.inf``) waits as long as it takes.

        Raises:
            JobTimeout: the job did not finish within ``timeout`` seconds.
            InvalidJobIdError: ``job_id`` is not an ObjectId or its 24-hex-digit string.
            ValueError: ``timeout`` is not None or a number >= 0.
        """
        return self._admin.wait(job_id, timeout)

    def counts(self, queue: Optional[str] = None) -> dict[str, int]:
        """Number of jobs per status, optionally for one queue."""
        return self._admin.counts(queue)

    def retry_job(self, job_id: ObjectId | str) -> bool:
        """Queue a ``failed`` or ``cancelled`` job again with a fresh attempt budget; False if it is neither.

        Raises:
            InvalidJobIdError: ``job_id`` is not an ObjectId or its 24-hex-digit string.
        """
        return self._admin.retry_job(job_id)

    def cancel_job(self, job_id: ObjectId | str) -> bool:
        """Cancel a ``pending`` job at once, or request the cancellation of a running one.

        A running job's worker learns of the request at its next heartbeat
        (or the handler's next :meth:`~mongo_job_queue.BaseJob.report_progress`);
        the handler sees :meth:`~mongo_job_queue.BaseJob.is_cancel_requested`
        or gets :class:`~mongo_job_queue.errors.JobCancelled`, and the job
        ends ``cancelled`` unless the handler completes first.

        Returns:
            True if the job was cancelled or its cancellation requested;
            False if it is finished or does not exist.

        Raises:
            InvalidJobIdError: ``job_id`` is not an ObjectId or its 24-hex-digit string.
        """
        return self._admin.cancel_job(job_id)

    def cancel_jobs(
        self, *, job_type: Optional[str] = None, queue: Optional[str] = None, running: bool = False
    ) -> dict[str, int]:
        """Cancel every pending job of a type and/or queue; with ``running``, request it for running ones too.

        Returns:
            ``{"cancelled": n, "requested": m}``.

        Raises:
            InvalidJobError: neither ``job_type`` nor ``queue`` was given (cancelling
                everything takes ``queue=...`` per queue, on purpose).
        """
        return self._admin.cancel_jobs(job_type=job_type, queue=queue, running=running)

    def purge(self, older_than_ms: int, statuses: Iterable[str] = FINISHED) -> int:
        """Delete finished jobs that finished more than ``older_than_ms`` ago; return how many."""
        return self._admin.purge(older_than_ms, statuses)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per queue name: ``counts`` by status, ``oldest_due_age_s`` of its pending jobs, ``paused``.

        A paused queue is listed even when it holds no job.
        """
        return self._admin.stats()

    def pause(self, *, queues: Iterable[str] = (), job_types: Iterable[str] = ()) -> dict[str, list[str]]:
        """Stop every worker, in every process, from claiming these queues and job types; return what is paused.

        Running jobs finish as usual. Workers read the state at most every
        ``pause_refresh_ms``, so a pause takes effect within about that long
        (at once in this process).
        """
        return self._admin.pause(queues=queues, job_types=job_types)

    def resume(self, *, queues: Iterable[str] = (), job_types: Iterable[str] = ()) -> dict[str, list[str]]:
        """Undo :meth:`pause` for these queues and job types; return what is still paused."""
        return self._admin.resume(queues=queues, job_types=job_types)

    def paused(self) -> dict[str, list[str]]:
        """The paused ``queues`` and ``job_types``, as stored in the database."""
        return self._admin.paused()

    # -- schedules ------------------------------------------------------------

    @property
    def scheduler(self) -> Scheduler:
        """The schedules registered in this process (created on first use)."""
        return self._schedules.scheduler

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
        return self._schedules.add(
            name, cron_expression, job_type, data, queue=queue, priority=priority, max_retries=max_retries,
            extra_fields=extra_fields, every_ms=every_ms, tz=timezone, catch_up=catch_up,
            catch_up_limit=catch_up_limit, misfire_grace_ms=misfire_grace_ms, overlap=overlap,
        )  # fmt: skip

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
        return self._schedules.remove(name)

    def schedules(self) -> list[ScheduleInfo]:
        """The schedules registered here and those known from the database, with next and last fire times."""
        return self._schedules.infos()

    def fire_schedules(self, now: Optional[datetime] = None) -> list[Fire]:
        """Enqueue the jobs of every fire time due now; the deterministic single step for tests and scripts.

        ``now`` (aware, or naive UTC) replaces the clock, so a test can walk
        a schedule through time without waiting. A running worker does the
        same by itself at each fire time.
        """
        return self._schedules.fire(None if now is None else to_naive_utc(now))

    def _prepare(self) -> None:
        # The model's indexes before this object's first own use of the collection.
        if not self._indexes_ensured:
            self.ensure_indexes()

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here and its leases are its own.
        self.worker._reset_runtime_state()
        if self.worker.scheduler is not None:
            self.worker.scheduler._after_fork_in_child()
        self._indexes_ensured = False


def _check_model(job_model: Any) -> None:
    if not isinstance(job_model, type) or not issubclass(job_model, BaseJob):
        raise JobModelError(f"job_model must be a subclass of mongo_job_queue.BaseJob, got {job_model!r}")
    if job_model._meta.get("abstract"):
        raise JobModelError(f"job_model {job_model.__name__} is abstract: subclass it and give it a collection")


def create_job_queue(
    *,
    job_model: type[J],
    logger: Optional[logging.Logger] = None,
    config: ConfigInput = None,
    clock: Clock = utcnow,
    sleep: Optional[Callable[[float], None]] = None,
    middleware: Optional[Iterable[Middleware]] = None,
) -> PersistentJobQueue[J]:
    """Build a :class:`PersistentJobQueue` for the app's job model.

    Args:
        job_model: A concrete subclass of :class:`~mongo_job_queue.BaseJob`.
        logger: Logger for queue events; defaults to per-module loggers under ``mongo_job_queue``.
        config: A mapping of config keys or a :class:`~mongo_job_queue.QueueConfig`.
        clock: Source of the current naive-UTC time (tests inject a fake one).
        sleep: Sleep used between retries of failed database calls.
        middleware: Lifecycle hooks (metrics, tracing, audit), see :mod:`mongo_job_queue.middleware`.

    Raises:
        JobModelError: ``job_model`` is not a concrete BaseJob subclass.
        ConfigError: an unknown key or an invalid value, named in the message.
    """
    return PersistentJobQueue(job_model, logger=logger, config=config, clock=clock, sleep=sleep, middleware=middleware)


def _after_fork_in_child() -> None:
    for q in list(_live_queues):
        q._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
