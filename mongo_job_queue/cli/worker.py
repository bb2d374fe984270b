"""The ``worker`` command: apply the options to a known queue, run it until stopped, then exit.

Shared by ``mongo-job-queue worker``, ``flask mongo-job-queue worker`` and
Django's ``run_job_worker``; the signals, the grace period and the exit code
are :func:`~mongo_job_queue.worker.runner.run_worker`'s.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from typing import Any, Optional

from pymongo.errors import PyMongoError

from ..errors import MongoJobQueueError
from ..handlers import HandlerFn
from ..queue import PersistentJobQueue
from ..worker.runner import run_worker
from .app import check_database
from .common import EXIT_IMPORT, EXIT_USAGE, CommandError, configure_logging, first_line

__all__ = ["run_worker_command"]

log = logging.getLogger(__name__)

_CHECK_INTERVAL_S = 0.05
_COUNTER_HOLD_S = 5.0


class _JobCounter:
    """Counts finished handler calls, for ``--max-jobs``; a wrapper, not a peek into the worker.

    The call that reaches the limit waits (briefly) until the stop has begun
    before it returns, so its freed thread does not let the poller claim one
    more job in between.
    """

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit
        self.finished = 0
        self.reached = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, fn: HandlerFn) -> HandlerFn:
        def counted(job: Any) -> Any:
            try:
                return fn(job)
            finally:
                with self._lock:
                    self.finished += 1
                    reached = self.limit is not None and self.finished >= self.limit
                if reached:
                    self.reached.set()
                    self.stopping.wait(_COUNTER_HOLD_S)

        return counted


def run_worker_command(queue: PersistentJobQueue[Any], args: argparse.Namespace) -> int:
    """The ``worker`` command on a known queue: apply the options, check the database, run until stopped.

    Raises:
        CommandError: bad options, no handler, or the database unreachable.
    """
    level = getattr(args, "log_level", None)
    configure_logging(level or logging.INFO, level is not None)
    overrides: dict[str, Any] = {}
    if args.concurrency:
        overrides["concurrency"] = args.concurrency
    if args.queues:
        overrides["queues"] = tuple(dict.fromkeys(args.queues))
    if getattr(args, "no_schedules", False):
        overrides["run_schedules"] = False
    if not len(queue.registry):
        raise CommandError("the queue has no handler registered: does the app module register them?", EXIT_IMPORT)
    counter = _JobCounter(args.max_jobs)
    try:
        queue.configure_worker(
            job_types=list(dict.fromkeys(args.job_types)) if args.job_types else None,
            wrap=counter.wrap if args.max_jobs else None,
            **overrides,
        )
    except MongoJobQueueError as exc:  # QueueStateError (already running) and invalid options alike
        raise CommandError(str(exc), EXIT_USAGE) from exc
    check_database(queue, getattr(args, "db_timeout", 5.0))
    until = _until(queue, counter, burst=args.burst, max_jobs=args.max_jobs)
    log.info(
        "worker: queues=%s types=%s%s%s",
        ",".join(queue.config.queues),
        ",".join(queue.worker.registry.types()),
        " burst" if args.burst else "",
        f" max-jobs={args.max_jobs}" if args.max_jobs else "",
    )
    metrics_server = _serve_metrics(queue, args)
    try:
        # A short check interval: --burst and --max-jobs stop promptly after the last job.
        code = run_worker(queue, stop_timeout=args.stop_timeout, until=until, check_interval=_CHECK_INTERVAL_S)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    log.info("worker: exiting with code %d", code)
    return code


def _serve_metrics(queue: PersistentJobQueue[Any], args: argparse.Namespace) -> Any:
    """Instrument the queue and serve ``/metrics`` for ``--metrics-port``; the server, or None."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    try:
        from ..contrib import prometheus  # only when asked: prometheus_client is an extra
    except ImportError as exc:
        raise CommandError(f"--metrics-port: {exc}", EXIT_USAGE) from exc
    addr = getattr(args, "metrics_addr", "0.0.0.0")
    try:
        prometheus.instrument(queue)
        server, _ = prometheus.start_http_server(port, addr=addr)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--metrics-port {port}: {exc}", EXIT_USAGE) from exc
    log.info("worker: Prometheus metrics at http://%s:%d/metrics", addr, server.server_port)
    return server


def _until(
    queue: PersistentJobQueue[Any], counter: _JobCounter, *, burst: bool, max_jobs: Optional[int]
) -> Optional[Callable[[], bool]]:
    if not burst and not max_jobs:
        return None
    worker_id = queue.worker.owner.worker_id

    def done() -> bool:
        if counter.reached.is_set():
            log.info("worker: %d job(s) ran, the --max-jobs limit; stopping", counter.finished)
            counter.stopping.set()
            return True
        if not burst:
            return False
        try:
            # Ours first, then due: a job of ours rescheduled due-now in between is seen by the second read.
            if queue.store.admin.running_count(worker_id):
                return False
            if queue.store.admin.has_due(queue.worker.registry.types(), queue.config.queues):
                return False
        except PyMongoError as exc:
            log.warning("burst check failed, trying again: %s", first_line(exc))
            return False
        log.info("worker: no job due and none running (burst); stopping")
        return True

    return done
