"""The public facade: :class:`PersistentJobQueue` and :func:`create_job_queue`."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Optional, TypeVar

from bson import ObjectId
from mongoengine.errors import FieldDoesNotExist, ValidationError

from .clock import MAX_DURATION_MS, Clock, after_ms, to_naive_utc, utcnow
from .config import MAX_RETRIES, ConfigInput, QueueConfig, load_config
from .errors import ConfigError, EagerJobFailed, InvalidJobError, JobModelError, QueueStateError
from .handlers import HandlerFn, HandlerRegistry
from .middleware import Middleware, MiddlewareChain
from .model import LIBRARY_FIELDS, BaseJob
from .queue_admin import QueueAdmin
from .queue_schedule import ScheduleMixin
from .retry import RetryStrategy, StopStrategy, WaitStrategy
from .status import COMPLETED, PENDING
from .store import JobStore
from .validation import check_document, check_payload
from .worker import Worker
from .worker.runner import run_worker

__all__ = ["PersistentJobQueue", "create_job_queue"]

J = TypeVar("J", bound=BaseJob)
F = TypeVar("F", bound=HandlerFn)

_ENQUEUE_KEYS = frozenset({"job_type", "data", "run_at", "delay_ms", "priority", "queue", "max_retries"})
_live_queues: weakref.WeakSet[PersistentJobQueue[Any]] = weakref.WeakSet()


class PersistentJobQueue(QueueAdmin[J], ScheduleMixin[J]):
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
        #: Testing hook (see :mod:`mongo_job_queue.testing`): when True, :meth:`enqueue`
        #: and :meth:`enqueue_many` run each new job of a registered type at once,
        #: in the calling thread, due or not, and return it in its new state.
        self.eager = False
        #: With :attr:`eager`: raise :class:`~mongo_job_queue.errors.EagerJobFailed`
        #: when an eagerly run job did not complete, so a test sees the failure.
        self.eager_propagate = False
        _live_queues.add(self)

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
    ) -> F:
        """Register ``fn(job)`` for ``job_type``, with optional tenacity retry strategies.

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

        Raises:
            HandlerError: duplicate type, non-callable handler or invalid strategy.
        """
        self.registry.register(job_type, fn, stop=stop, wait=wait, retry=retry, max_retries=max_retries)
        return fn

    def handler(
        self,
        job_type: str,
        *,
        stop: Optional[StopStrategy] = None,
        wait: Optional[WaitStrategy] = None,
        retry: Optional[RetryStrategy] = None,
        max_retries: Optional[int] = None,
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: F) -> F:
            return self.register_handler(job_type, fn, stop=stop, wait=wait, retry=retry, max_retries=max_retries)

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
            unique_key: At most one unfinished job per key: if one exists,
                nothing is inserted and that job is returned instead, so
                concurrent enqueues of the same key produce one job.
            unique_for_ms: With ``unique_key``, keep the key reserved for this
                long after enqueue even once the job finished (the finished
                job is returned meanwhile).
            **extra_fields: Values for the app's own fields, validated by its Document.

        Raises:
            InvalidJobError: bad input; nothing was written.
        """
        doc = self._build(
            {
                "job_type": job_type,
                "data": data,
                "run_at": run_at,
                "delay_ms": delay_ms,
                "priority": priority,
                "queue": queue,
                "max_retries": max_retries,
                "unique_key": unique_key,
                "unique_for_ms": unique_for_ms,
            },
            extra_fields,
        )
        self._announce([doc])
        existing: Optional[dict[str, Any]] = None
        try:
            if "unique_key" in doc:
                existing = self.store.jobs.insert(doc)
            else:
                self.store.jobs.insert(doc)
        except BaseException as exc:
            self._aborted([doc], exc)
            raise
        if existing is not None:
            self._aborted([doc], None)  # a job with this unique key is already queued: that one is returned
            return self._instance(existing)
        self.hooks.emit("after_enqueue", doc)
        if self.eager:
            return self._run_eagerly([doc])[0]
        self._wake_if_local(doc)
        return self._instance(doc)

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[J]:
        """Validate every job, then insert them all in one bulk write.

        Each mapping takes :meth:`enqueue`'s arguments by name (``job_type``
        required) plus the app's own fields. If any job is invalid, nothing is
        written and the error names its index.
        """
        docs = []
        for index, spec in enumerate(jobs):
            if not isinstance(spec, Mapping):
                raise InvalidJobError(f"jobs[{index}] must be a mapping, got {type(spec).__name__}")
            if "job_type" not in spec:
                raise InvalidJobError(f"jobs[{index}] has no 'job_type'")
            if "unique_key" in spec or "unique_for_ms" in spec:
                raise InvalidJobError(f"jobs[{index}]: unique_key is supported by enqueue() only")
            known = {k: v for k, v in spec.items() if k in _ENQUEUE_KEYS}
            extra = {k: v for k, v in spec.items() if k not in _ENQUEUE_KEYS}
            known.setdefault("priority", 0)
            known.setdefault("queue", "default")
            try:
                docs.append(self._build(known, extra))
            except InvalidJobError as exc:
                raise InvalidJobError(f"jobs[{index}]: {exc}") from exc
        self._announce(docs)
        try:
            self.store.jobs.insert_many(docs)
        except BaseException as exc:
            self._aborted(docs, exc)
            raise
        for doc in docs:
            self.hooks.emit("after_enqueue", doc)
        if self.eager:
            return self._run_eagerly(docs)
        for doc in docs:
            self._wake_if_local(doc)
        return [self._instance(doc) for doc in docs]

    def _announce(self, docs: list[dict[str, Any]]) -> None:
        """Run before_enqueue on every document, then re-check what the hooks added."""
        if not self.hooks:
            return
        for doc in docs:
            self.hooks.emit("before_enqueue", doc)
        try:
            for doc in docs:
                check_document(doc, limit=self.config.max_job_bytes)
        except InvalidJobError as exc:
            self._aborted(docs, exc)
            raise

    def _aborted(self, docs: list[dict[str, Any]], exc: Optional[BaseException]) -> None:
        # Every before_enqueue gets an after_enqueue or this, so a producer span always ends.
        for doc in docs:
            self.hooks.emit("on_enqueue_aborted", doc, exc=exc)

    def _run_eagerly(self, docs: list[dict[str, Any]]) -> list[J]:
        # App tests want the side effects of enqueue at once, without threads.
        jobs = []
        for doc in docs:
            if doc["type"] in self.registry:
                self.worker.run_job_now(doc["_id"])
                fresh = self.store.admin.get(doc["_id"])
                doc = fresh if fresh is not None else doc
                if self.eager_propagate and doc.get("status") != COMPLETED:
                    error = doc.get("last_error") or {}
                    raise EagerJobFailed(
                        f"job {doc['_id']} ({doc['type']}) ended {doc.get('status')}: "
                        f"{error.get('type', '?')}: {error.get('message', '')}",
                        job_id=doc["_id"],
                    )
            jobs.append(self._instance(doc))
        return jobs

    def _build(
        self, spec: Mapping[str, Any], extra: Mapping[str, Any], now: Optional[datetime] = None
    ) -> dict[str, Any]:
        job_type = spec["job_type"]
        if not isinstance(job_type, str) or not job_type:
            raise InvalidJobError(f"job_type must be a non-empty str, got {job_type!r}")
        data = spec.get("data")
        data = {} if data is None else data
        check_payload(data)
        queue = spec.get("queue", "default")
        if not isinstance(queue, str) or not queue:
            raise InvalidJobError(f"queue must be a non-empty str, got {queue!r}")
        priority = spec.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidJobError(f"priority must be an int, got {priority!r}")
        if not -(2**31) <= priority < 2**31:
            raise InvalidJobError(f"priority must fit in 32 bits, got {priority}")
        max_retries = spec.get("max_retries")
        default_retries = max_retries is None  # then the handler's, where the job runs, decides (retry_limit)
        if max_retries is None:
            registered = self.registry.get(job_type)
            max_retries = registered.max_retries if registered and registered.max_retries is not None else None
        if max_retries is None:
            max_retries = self.config.max_retries
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES:
            raise InvalidJobError(f"max_retries must be an int from 0 to {MAX_RETRIES}, got {_short_repr(max_retries)}")
        unique = self._unique(spec.get("unique_key"), spec.get("unique_for_ms"))
        now = self.store.now() if now is None else now
        run_at = self._run_at(spec.get("run_at"), spec.get("delay_ms"), now)
        forbidden = sorted(set(extra) & LIBRARY_FIELDS)
        if forbidden:
            raise InvalidJobError(
                f"field(s) {', '.join(forbidden)} are managed by the queue and cannot be set at enqueue"
            )
        fields = {
            "type": job_type,
            "status": PENDING,
            "data": dict(data),
            "queue": queue,
            "priority": priority,
            "run_at": run_at,
            "attempts": 0,
            "max_retries": max_retries,
            "created_at": now,
            "updated_at": now,
        }
        if default_retries:
            fields["max_retries_default"] = True
        if unique is not None:
            fields["unique_key"] = unique[0]
            if unique[1] is not None:
                fields["unique_until"] = after_ms(now, unique[1])
        try:
            job = self.job_model(**fields, **extra)
            job.validate()
        except (FieldDoesNotExist, ValidationError) as exc:
            raise InvalidJobError(f"{self.job_model.__name__} rejected the job: {exc}") from exc
        doc: dict[str, Any] = job.to_mongo().to_dict()
        doc["_id"] = ObjectId()
        check_document(doc, limit=self.config.max_job_bytes)
        return doc

    @staticmethod
    def _unique(key: Any, for_ms: Any) -> Optional[tuple[str, Optional[int]]]:
        if key is None:
            if for_ms is not None:
                raise InvalidJobError("unique_for_ms needs a unique_key")
            return None
        if not isinstance(key, str) or not key or len(key) > 1000:
            raise InvalidJobError(f"unique_key must be a non-empty str of at most 1000 characters, got {key!r:.80}")
        if for_ms is not None and (
            isinstance(for_ms, bool) or not isinstance(for_ms, int) or not 1 <= for_ms <= MAX_DURATION_MS
        ):
            raise InvalidJobError(
                f"unique_for_ms must be an int from 1 to {MAX_DURATION_MS} (100 years), got {_short_repr(for_ms)}"
            )
        return key, for_ms

    @staticmethod
    def _run_at(run_at: Any, delay_ms: Any, now: datetime) -> datetime:
        if run_at is not None and delay_ms is not None:
            raise InvalidJobError("pass run_at or delay_ms, not both")
        if delay_ms is not None:
            if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or not 0 <= delay_ms <= MAX_DURATION_MS:
                raise InvalidJobError(
                    f"delay_ms must be an int from 0 to {MAX_DURATION_MS} (100 years), got {_short_repr(delay_ms)}"
                )
            return after_ms(now, delay_ms)
        if run_at is not None:
            if not isinstance(run_at, datetime):
                raise InvalidJobError(f"run_at must be a datetime, got {type(run_at).__name__}")
            try:
                return to_naive_utc(run_at)
            except (OverflowError, ValueError) as exc:  # UTC of an aware time near datetime.min/max
                raise InvalidJobError(f"run_at {_short_repr(run_at)} is out of range in UTC: {exc}") from exc
        return now

    def _instance(self, doc: dict[str, Any]) -> J:
        return self.job_model._from_son(doc)  # type: ignore[no-any-return]

    def _wake_if_local(self, doc: Mapping[str, Any]) -> None:
        # A job enqueued in the process that runs it need not wait for the next poll.
        local = self.worker.running and doc["type"] in self.registry and doc["queue"] in self.config.queues
        if local and doc["run_at"] <= self.store.now():
            self.worker.notify()

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
        if not self._indexes_ensured:
            self.ensure_indexes()
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

        See :func:`mongo_job_queue.worker.runner.run_worker`: a first signal stops
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
            self.config = self.store.config = new_config
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
        if not self._indexes_ensured:
            self.ensure_indexes()
        claimed = self.worker.claim_one()
        if claimed is None:
            return None
        self.worker.process(claimed)
        doc = self.store.admin.get(claimed.id)
        return self._instance(doc) if doc is not None else None

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

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here and its leases are its own.
        self.worker._reset_runtime_state()
        if self.worker.scheduler is not None:
            self.worker.scheduler._after_fork_in_child()
        self._indexes_ensured = False


def _short_repr(value: Any) -> str:
    # repr() of an int of more than 4300 digits raises ValueError.
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    return f"{value!r:.80}"


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
