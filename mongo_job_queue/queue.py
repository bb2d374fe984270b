"""The public facade: :class:`PersistentJobQueue` and :func:`create_job_queue`.

The queue object only forwards: each public method delegates to one of
the components that :mod:`.queue_parts` builds. Enqueues go through
:mod:`.enqueue`, reads and administration through :mod:`.queue_admin`,
schedules through :mod:`.schedules.manager`, and running jobs through
:mod:`.worker`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Generic, Optional, TypeVar

from bson import ObjectId

from .batches import Batch, BatchInfo, Callback
from .builder import job_arguments
from .chunks import BatchHandlerFn, register_batch_handler
from .clock import Clock, to_naive_utc, utcnow
from .config import ConfigInput, QueueConfig, load_config
from .forwarding import decorator_form, method_signature_of, parameters_of, signature_of
from .handlers import HandlerFn, HandlerRegistry
from .limits import Limit, define_limit
from .locks import Lock, LockBackend
from .middleware import Middleware, MiddlewareChain
from .model import BaseJob, check_job_model
from .queue_parts import build_parts
from .schedules.arguments import schedule_arguments
from .schedules.definition import Schedule
from .schedules.manager import ScheduleInfo
from .schedules.service import Fire, Scheduler
from .status import FINISHED
from .store.limit_hints import HintSource
from .tasks import Task
from .worker.runner import run_worker
from .worker.wakeup import WakeupChannel, namespace_of
from .workflows import JobSpec, Workflow

__all__ = ["PersistentJobQueue", "create_job_queue"]

J = TypeVar("J", bound=BaseJob)
F = TypeVar("F", bound=HandlerFn)
B = TypeVar("B", bound=BatchHandlerFn)
R = TypeVar("R")


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
        #: Testing hook: run each new job at once, in the calling thread (see :mod:`mongo_job_queue.testing`).
        self.eager = False
        #: With :attr:`eager`: raise :class:`~mongo_job_queue.errors.EagerJobFailed` when a job did not complete.
        self.eager_propagate = False
        parts = build_parts(
            job_model, self.config, self.registry, self.hooks, self, clock=clock, sleep=sleep, logger=logger
        )
        self.store, self.worker = parts.store, parts.worker
        self.locks = parts.locks  #: The default backend of :meth:`lock`: MongoDB.
        self._local, self._enqueuer, self._admin = parts.local, parts.enqueuer, parts.admin
        self._schedules, self._batches = parts.schedules, parts.batches

    def add_middleware(self, middleware: Middleware) -> None:
        """Add lifecycle hooks after construction (e.g. by a Flask or Django integration)."""
        self.hooks.add(middleware)

    # -- handlers -----------------------------------------------------------

    @method_signature_of(HandlerRegistry.register)
    def register_handler(self, *args: Any, **options: Any) -> Any:
        """Register ``fn(job)`` for ``job_type``; return ``fn``. What it returns, if BSON encodable, is the ``result``.

        ``stop``, ``wait`` and ``retry`` are tenacity strategies (:ref:`per-handler-strategies`; ``stop``
        only shortens the retries ``max_retries`` allows); ``max_retries`` is the default of this type's jobs
        enqueued here; ``time_limit_ms`` bounds one run (``0``: none; :ref:`time-limits`).

        Raises:
            HandlerError: duplicate type, non-callable handler, invalid strategy or time limit.
        """
        return self.registry.register(*args, **options)

    handler = decorator_form(register_handler)

    def task(self, job_type: str, **options: Any) -> Callable[[Callable[[J], R]], Task[J, R]]:
        """Decorator: register the function as :meth:`register_handler` does; return a :class:`~mongo_job_queue.Task`.

        ``options`` are :meth:`register_handler`'s keywords; the task's ``enqueue()`` names the job type once.

        Raises:
            HandlerError: as :meth:`register_handler`; TypeError for an unknown option.
        """
        return Task.decorator(self, job_type, lambda fn: self.register_handler(job_type, fn, **options))

    # -- enqueue ------------------------------------------------------------

    @parameters_of(job_arguments)
    def enqueue(self, *args: Any, **kwargs: Any) -> J:
        """Validate and insert one job; return the saved instance of the app's model.

        ``run_at`` (aware, or naive UTC) and ``delay_ms`` exclude each other; ``extra_fields`` are
        the app's own fields; ``time_limit_ms`` overrides the handler's and the config's default
        (``0``: none). An unfinished job holding ``unique_key`` is returned instead of a new one
        (see :doc:`job-control`).

        Raises:
            InvalidJobError: bad input, or with ``strict_types`` a type no
                handler is known for; nothing was written.
        """
        return self._enqueuer.enqueue(*job_arguments(*args, **kwargs))

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
        self._local.ensure_indexes()

    def start_polling(self) -> None:
        """Start the background worker in this process; idempotent, and after a :meth:`stop` in progress.

        Raises:
            QueueStateError: no handler is registered, or called from a thread
                that a stop in progress waits for (see :ref:`graceful-stop`).
        """
        self._local.start()

    def stop(
        self, timeout: Optional[float] = 30.0, *, requeue_running: bool = False, force: Optional[threading.Event] = None
    ) -> bool:
        """Stop gracefully; True if every running job and worker thread ended within ``timeout`` (None: no limit).

        ``requeue_running`` is for a process about to exit: the jobs still running then go back to
        the queue when it exits. Setting ``force`` cuts the wait short. See :ref:`graceful-stop`.
        """
        return self.worker.stop(timeout, requeue_running=requeue_running, force=force)

    def run_worker(
        self, *, stop_timeout: Optional[float] = 30.0, install_signal_handlers: bool = True,
        until: Optional[Callable[[], bool]] = None,
    ) -> int:  # fmt: skip
        """Run the worker in the foreground until SIGTERM/SIGINT; return an exit code (see :ref:`graceful-stop`)."""
        return run_worker(self, stop_timeout=stop_timeout, install_signal_handlers=install_signal_handlers, until=until)

    @property
    def running(self) -> bool:
        """Whether the background worker is running in this process (started, and its threads alive)."""
        return self.worker.running

    def configure_worker(
        self, *, job_types: Optional[Iterable[str]] = None, wrap: Optional[Callable[[HandlerFn], HandlerFn]] = None,
        **config: Any,
    ) -> None:  # fmt: skip
        """Adjust this process's worker before it starts: the CLI's options, the framework integrations.

        ``config`` replaces :class:`~mongo_job_queue.QueueConfig` keys. ``job_types`` claims only these
        registered types here and ``wrap`` wraps each handler the worker calls; with either, handlers
        registered later are not claimed.

        Raises:
            QueueStateError: the worker is running.
            ConfigError: an unknown key or an invalid value.
            HandlerError: a job type that has no handler.
        """
        self.config = self._local.configure(self.config, job_types, wrap, config)

    def run_once(self) -> Optional[J]:
        """Claim one due job, run it in the calling thread and return it in its new state; None if none is due.

        No heartbeat renews its lease: keep such handlers shorter than ``lease_ms`` (see :doc:`testing`).
        """
        job_id = self._local.run_once()
        return None if job_id is None else self.get_job(job_id)

    def drain(self, max_jobs: Optional[int] = None) -> int:
        """Run due jobs with :meth:`run_once` until none is due (or ``max_jobs``); return how many ran."""
        return self._local.drain(max_jobs)

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

    @parameters_of(schedule_arguments)
    def schedule(self, *args: Any, **kwargs: Any) -> Schedule:
        """Enqueue ``job_type`` with ``data`` at every fire time of a cron expression or interval (:doc:`scheduling`).

        ``extra_fields`` are the app's own fields of each job; the other keywords are described there.

        Raises:
            ScheduleError: an invalid definition, or a schedule of that name already registered.
            InvalidJobError: the job itself would be rejected by ``enqueue``.
        """
        return self._schedules.add(schedule_arguments(*args, **kwargs))

    @parameters_of(schedule_arguments)
    def periodic(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        """Decorator: :meth:`schedule` the job and register the function as its handler, or neither if one is invalid.

        ``job_type`` defaults to ``name``; the keywords ``stop``, ``wait`` and ``retry`` are
        :meth:`register_handler`'s, and ``max_retries`` serves both.
        """
        return self._schedules.periodic(args, kwargs)

    def unschedule(self, name: str) -> bool:
        """Stop firing ``name`` from this process (others fire it until they stop too); False if it was not here."""
        return self._schedules.remove(name)

    def schedules(self) -> list[ScheduleInfo]:
        """The schedules registered here and those known from the database, with next and last fire times."""
        return self._schedules.infos()

    def fire_schedules(self, now: Optional[datetime] = None) -> list[Fire]:
        """Enqueue the jobs of every fire time due at ``now`` (aware, or naive UTC; default: the clock), for tests."""
        return self._schedules.fire(None if now is None else to_naive_utc(now))

    def register_batch_handler(
        self, job_type: str, fn: B, *, max_size: int = 100, max_wait_ms: int = 1000, key: Optional[str] = None,
        **options: Any,
    ) -> B:  # fmt: skip
        """Register ``fn(jobs)`` for chunks of ``job_type`` (:doc:`chunks`); ``options`` as :meth:`register_handler`."""
        register_batch_handler(self.registry, self.job_model, job_type, fn, max_size=max_size,
                               max_wait_ms=max_wait_ms, key=key, **options)  # fmt: skip
        return fn

    def lock(self, key: str, *, backend: Optional[LockBackend] = None, **options: Any) -> Lock:
        """A fenced lock on ``key``: ``with queue.lock(key, ttl_ms=30_000) as lease:`` (options: :doc:`locks`)."""
        return Lock(backend or self.locks, key, **options)

    def add_wakeup(self, channel: WakeupChannel) -> None:
        """Wake idle workers through ``channel`` too (e.g. Redis pub/sub), from the next start: :ref:`redis-wakeups`."""
        self.worker.wakeups.append(channel)

    def add_limit_hints(self, hints: HintSource) -> None:
        """Pre-check limiters in ``hints`` (e.g. Redis) before MongoDB round trips; never admits: :ref:`limit-hints`.

        The hints' namespace is ``<database>.<jobs collection>/<its random id>`` (one upsert in the control
        collection), so deployments with the same names never read each other's hints.
        """
        namespace = f"{namespace_of(self.store)}/{self.store.control.instance_id()}"
        self.store.limits.hints = hints.bind(namespace, self.store.config.lease_ms)

    def job(self, job_type: str, data: Optional[Mapping[str, Any]] = None, **options: Any) -> JobSpec:
        """A job spec for :meth:`enqueue_graph` (``options``: :meth:`enqueue`'s keywords); see :doc:`workflows`."""
        return JobSpec(job_type, data, dict(options))

    def enqueue_graph(self, graph: JobSpec | Workflow) -> list[J]:
        """Insert a workflow (:func:`~mongo_job_queue.chain`, ``group``, ``chord``) all or nothing, checked first.

        Raises:
            WorkflowError: a cycle, an unknown dependency or a bad policy; nothing was written.
        """
        return self._enqueuer.enqueue_graph(graph)

    # -- batches (see :doc:`batches`) -----------------------------------------

    def batch(
        self, *, on_complete: Optional[Callback] = None, on_success: Optional[Callback] = None,
        on_failure: Optional[Callback] = None, **extra: Any,
    ) -> Batch[J]:  # fmt: skip
        """Open a batch; callbacks are ``(job_type, data)`` or enqueue mappings; ``extra``: app fields of its jobs."""
        callbacks = {"complete": on_complete, "success": on_success, "failure": on_failure}
        return Batch.create(self._batches, callbacks, extra)

    def get_batch(self, batch_id: ObjectId | str) -> Optional[BatchInfo]:
        """A batch's state and counts by status, None if there is none; InvalidBatchError for a malformed id."""
        return self._batches.get(batch_id)

    def cancel_batch(self, batch_id: ObjectId | str) -> dict[str, int]:
        """Seal the batch, cancel its pending jobs and flag its running ones: ``{"cancelled", "requested"}``."""
        return self._batches.cancel(batch_id)

    def retry_batch(self, batch_id: ObjectId | str) -> int:
        """Queue the batch's failed jobs again (a finished batch goes back to sealed); how many."""
        return self._batches.retry(batch_id)

    def limit(self, name: str, **options: Any) -> Limit:
        """Store limit ``name`` with ``key``, ``max_running``, ``rate``, ``burst``, ``job_types``, ``fair``."""
        return define_limit(self.store.limits, name, **options)

    def remove_limit(self, name: str) -> bool:
        """Delete the limit ``name`` for every worker; False if there was none."""
        return self.store.limits.remove(name)

    def limits(self) -> dict[str, Any]:
        """The stored limits (``definitions``) and every limiter's ``running`` holders and next start (``keys``)."""
        return {"definitions": self.store.limits.stored(), "keys": self.store.limits.snapshot()}

    def seal_batch(self, batch_id: ObjectId | str) -> None:
        """Seal a batch (one whose opener died open, say) and check it: with every job final, it finishes now."""
        self._batches.seal(batch_id)


@signature_of(PersistentJobQueue)
def create_job_queue(*args: Any, **kwargs: Any) -> PersistentJobQueue[Any]:
    """Build a :class:`PersistentJobQueue` for ``job_model``, a concrete :class:`~mongo_job_queue.BaseJob` subclass.

    ``config``: config keys or a :class:`~mongo_job_queue.QueueConfig` (:doc:`configuration`); ``middleware``:
    lifecycle hooks (:mod:`mongo_job_queue.middleware`); ``logger``: by default per-module loggers under
    ``mongo_job_queue``; ``clock`` (naive-UTC now) and ``sleep`` (between retried database calls) are for tests.

    Raises:
        JobModelError: ``job_model`` is not a concrete BaseJob subclass.
        ConfigError: an unknown key or an invalid value, named in the message.
    """
    return PersistentJobQueue(*args, **kwargs)
