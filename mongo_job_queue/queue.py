"""The public facade: :class:`PersistentJobQueue` and :func:`create_job_queue`.

The queue object only wires components together: each public method
delegates to one of them, built here with its collaborators. Enqueues go
through :mod:`.enqueue`, reads and administration through
:mod:`.queue_admin`, schedules through :mod:`.schedules.manager`, and
running jobs through :mod:`.worker`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Any, Generic, Optional, TypeVar, Union

from bson import ObjectId

from .after_fork import renew_in_child
from .clock import Clock, to_naive_utc, utcnow
from .config import ConfigInput, QueueConfig, load_config
from .enqueue import Enqueuer, JobBuilder
from .errors import QueueStateError
from .handlers import HandlerFn, HandlerRegistry
from .limits import Limit, define_limit
from .middleware import Middleware, MiddlewareChain
from .model import BaseJob, check_job_model
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


class PersistentJobQueue(Generic[J]):
    """A MongoDB-backed job queue over the app's own job model.

    Build it with :func:`create_job_queue`. The same object enqueues and, once
    :meth:`start_polling` is called, runs a worker pool in background threads
    of this process. Methods taking a ``job_id`` raise
    :class:`~mongo_job_queue.errors.InvalidJobIdError` for anything but an
    ObjectId or its 24-hex-digit string.
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
        check_job_model(job_model)
        self.job_model = job_model
        self.config: QueueConfig = load_config(config)
        self.clock = clock
        self.registry = HandlerRegistry()
        self.hooks = MiddlewareChain(self, middleware)
        self.store = JobStore(job_model, self.config, clock=clock, sleep=sleep, logger=logger)
        self.worker = Worker(self.store, self.registry, self.config, logger=logger, hooks=self.hooks)
        #: Testing hook: run each new job at once, in the calling thread (see :mod:`mongo_job_queue.testing`).
        self.eager = False
        #: With :attr:`eager`: raise :class:`~mongo_job_queue.errors.EagerJobFailed` when a job did not complete.
        self.eager_propagate = False
        self._indexes_ensured = False
        self._builder = JobBuilder(job_model, self.config, self.registry)
        self._enqueuer = Enqueuer(self._builder, self.store, self.worker, self.hooks, flags=self)
        self._admin = QueueAdmin(job_model, self.store, self.worker, self.hooks)
        self._schedules = ScheduleManager(self.store, self.worker, self._enqueuer, prepare=self._prepare)
        renew_in_child(self)

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
            time_limit_ms: How long one run may take (``0``: none; default: the config's
                ``default_time_limit_ms``; a job's own overrides it), see :ref:`time-limits`.

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

        ``options`` are :meth:`register_handler`'s keywords; the task's ``enqueue()`` names the job type once.

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

        ``run_at`` (aware, or naive UTC) and ``delay_ms`` exclude each other; ``extra_fields`` are
        the app's own fields; ``time_limit_ms`` overrides the handler's and the config's default
        (``0``: none). An unfinished job holding ``unique_key`` is returned instead of a new one
        (see :doc:`job-control`).

        Raises:
            InvalidJobError: bad input, or with ``strict_types`` a type no
                handler is known for; nothing was written.
        """
        spec = dict(
            job_type=job_type, data=data, run_at=run_at, delay_ms=delay_ms, priority=priority, queue=queue,
            max_retries=max_retries, time_limit_ms=time_limit_ms, unique_key=unique_key, unique_for_ms=unique_for_ms,
        )  # fmt: skip
        return self._enqueuer.enqueue(spec, extra_fields)

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[J]:
        """Validate every job (mappings of :meth:`enqueue`'s arguments), then insert them all in one bulk write.

        Raises:
            InvalidJobError: a job is invalid (the message names its index); nothing was written.
        """
        return self._enqueuer.enqueue_many(jobs)

    # -- worker -------------------------------------------------------------

    def ensure_indexes(self) -> None:
        """Create and check the model's and the retention TTL indexes now; the queue does it by itself before use.

        Raises:
            IndexSetupError: a unique index the queue relies on cannot be created.
        """
        self.store.ensure_indexes()
        self._indexes_ensured = True

    def start_polling(self) -> None:
        """Start the background worker in this process; idempotent, and after a :meth:`stop` in progress.

        Raises:
            QueueStateError: no handler is registered, or called from a thread
                that a stop in progress waits for (see :ref:`graceful-stop`).
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
        """Stop gracefully; True if every running job and worker thread ended within ``timeout`` (None: no limit).

        ``requeue_running`` is for a process about to exit: the jobs still running then go back to
        the queue when it exits. Setting ``force`` cuts the wait short. See :ref:`graceful-stop`.
        """
        return self.worker.stop(timeout, requeue_running=requeue_running, force=force)

    def run_worker(
        self,
        *,
        stop_timeout: Optional[float] = 30.0,
        install_signal_handlers: bool = True,
        until: Optional[Callable[[], bool]] = None,
    ) -> int:
        """Run the worker in the foreground until SIGTERM/SIGINT; return an exit code (see :ref:`graceful-stop`)."""
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
        """Adjust this process's worker before it starts: the CLI's options, the framework integrations.

        ``config`` replaces :class:`~mongo_job_queue.QueueConfig` keys. ``job_types`` claims only these
        registered types here and ``wrap`` wraps each handler the worker calls; with either, handlers
        registered later are not claimed.

        Raises:
            QueueStateError: the worker is running.
            ConfigError: an unknown key or an invalid value.
            HandlerError: a job type that has no handler.
        """
        if self.worker.running:
            raise QueueStateError("configure_worker() while the worker is running: stop it first")
        if config:
            new_config = load_config(config, base=self.config)
            self.config = self.store.config = self._builder.config = new_config
            # The lease owner may name a new worker_id; runs still finishing
            # after a timed-out stop keep their heartbeat.
            self.worker.reconfigure(new_config)
        if job_types is not None or wrap is not None:
            self.worker.registry = self.registry.subset(job_types, wrap=wrap)

    def run_once(self) -> Optional[J]:
        """Claim one due job, run it in the calling thread and return it in its new state; None if none is due.

        No heartbeat renews its lease: keep such handlers shorter than ``lease_ms`` (see :doc:`testing`).
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
        """The job with this id, freshly read, or None."""
        return self._admin.get_job(job_id)

    def wait(self, job_id: ObjectId | str, timeout: Optional[float] = 30.0) -> Optional[J]:
        """Wait until the job is finished and return it; None if there is no such job (see :ref:`progress`).

        Raises:
            JobTimeout: the job did not finish within ``timeout`` seconds.
            ValueError: ``timeout`` is not None or a number >= 0.
        """
        return self._admin.wait(job_id, timeout)

    def counts(self, queue: Optional[str] = None) -> dict[str, int]:
        """Number of jobs per status, optionally for one queue."""
        return self._admin.counts(queue)

    def retry_job(self, job_id: ObjectId | str) -> bool:
        """Queue a ``failed`` or ``cancelled`` job again with a fresh attempt budget; False if it is neither."""
        return self._admin.retry_job(job_id)

    def cancel_job(self, job_id: ObjectId | str) -> bool:
        """Cancel a ``pending`` job, or ask a running one's handler to stop (see :ref:`cancellation`).

        Returns False, doing nothing, if the job is finished or does not exist.
        """
        return self._admin.cancel_job(job_id)

    def cancel_jobs(
        self, *, job_type: Optional[str] = None, queue: Optional[str] = None, running: bool = False
    ) -> dict[str, int]:
        """Cancel the pending jobs of a type and/or queue (``running``: ask running ones too); return the counts.

        Raises:
            InvalidJobError: neither ``job_type`` nor ``queue`` was given.
        """
        return self._admin.cancel_jobs(job_type=job_type, queue=queue, running=running)

    def purge(self, older_than_ms: int, statuses: Iterable[str] = FINISHED) -> int:
        """Delete finished jobs that finished more than ``older_than_ms`` ago; return how many."""
        return self._admin.purge(older_than_ms, statuses)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per queue name (paused ones included): ``counts`` by status, ``oldest_due_age_s``, ``paused``."""
        return self._admin.stats()

    def pause(self, *, queues: Iterable[str] = (), job_types: Iterable[str] = ()) -> dict[str, list[str]]:
        """Stop every worker, in every process, from claiming these (see :ref:`pause`); return what is paused."""
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
        """Enqueue ``job_type`` with ``data`` at every fire time of a cron expression or interval (:doc:`scheduling`).

        Raises:
            ScheduleError: an invalid definition, or a schedule of that name already registered.
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
        """Decorator: :meth:`schedule` the job and register the function as its handler, or neither if one is invalid.

        ``job_type`` defaults to ``name``; ``stop``, ``wait`` and ``retry`` are :meth:`register_handler`'s.
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
        """Stop firing ``name`` from this process (others fire it until they stop too); False if it was not here."""
        return self._schedules.remove(name)

    def schedules(self) -> list[ScheduleInfo]:
        """The schedules registered here and those known from the database, with next and last fire times."""
        return self._schedules.infos()

    def fire_schedules(self, now: Optional[datetime] = None) -> list[Fire]:
        """Enqueue the jobs of every fire time due at ``now`` (aware, or naive UTC; default: the clock), for tests."""
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

    def limit(self, name: str, **options: Any) -> Limit:
        """Store limit ``name`` with ``key``, ``max_running``, ``rate``, ``burst``, ``job_types``, ``fair``."""
        return define_limit(self.store.limits, name, **options)

    def remove_limit(self, name: str) -> bool:
        """Delete the limit ``name`` for every worker; False if there was none."""
        return self.store.limits.remove(name)

    def limits(self) -> dict[str, Any]:
        """The stored limits (``definitions``) and every limiter's ``running`` holders and next start (``keys``)."""
        return {"definitions": self.store.limits.stored(), "keys": self.store.limits.snapshot()}


def create_job_queue(
    *,
    job_model: type[J],
    logger: Optional[logging.Logger] = None,
    config: ConfigInput = None,
    clock: Clock = utcnow,
    sleep: Optional[Callable[[float], None]] = None,
    middleware: Optional[Iterable[Middleware]] = None,
) -> PersistentJobQueue[J]:
    """Build a :class:`PersistentJobQueue` for ``job_model``, a concrete :class:`~mongo_job_queue.BaseJob` subclass.

    Args:
        logger: Logger for queue events; by default, per-module loggers under ``mongo_job_queue``.
        config: A mapping of config keys or a :class:`~mongo_job_queue.QueueConfig`.
        clock: Source of the current naive-UTC time (tests inject a fake one).
        sleep: Sleep used between retries of failed database calls.
        middleware: Lifecycle hooks (metrics, tracing, audit), see :mod:`mongo_job_queue.middleware`.

    Raises:
        JobModelError: ``job_model`` is not a concrete BaseJob subclass.
        ConfigError: an unknown key or an invalid value, named in the message.
    """
    return PersistentJobQueue(job_model, logger=logger, config=config, clock=clock, sleep=sleep, middleware=middleware)
