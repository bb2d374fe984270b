"""Runs given up by ``stop(requeue_running=True)``: back to the queue when the process exits.

A process about to exit cannot wait for a handler that outlives the stop
timeout, and cannot interrupt it either. Returning its job to the queue at
once would make it due while the handler still runs here, so another worker
could run it concurrently. Instead the run keeps its lease (the heartbeat
goes on) and is requeued, fenced, by an exit hook; a handler that finishes
before that records its own outcome.

The exit hook is not the end of the process: daemon threads, the handler's
included, keep running through the remaining exit hooks and the
interpreter's finalisation. So the requeue does not make the job due at
once but after a grace (``Executor.shutdown_grace_ms``: at least 2 s or a
heartbeat interval, at most the lease), by which time this process is gone.
"""

from __future__ import annotations

import atexit
import logging
import threading

from ..context import RunState
from .executor import Executor
from .inflight import InflightTable, run_key

__all__ = ["ShutdownRequeue"]

log = logging.getLogger(__name__)


class ShutdownRequeue:
    """The runs one worker gave up, requeued by :meth:`requeue` (at exit, or when called)."""

    def __init__(self, executor: Executor, table: InflightTable, worker_id: str) -> None:
        self.executor = executor
        self.table = table
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self._runs: list[RunState] = []

    def abandon(self, runs: list[RunState]) -> None:
        with self._lock:
            self._runs.extend(runs)
        _PENDING.add(self)

    def requeue(self) -> None:
        """Return the given-up runs whose handlers still run to the queue, attempt counted (fenced)."""
        with self._lock:
            runs, self._runs = self._runs, []
            _PENDING.discard(self)
        for state in runs:
            if self.table.get(run_key(state.claimed)) is not None:
                self.executor.requeue_on_shutdown(state, self.worker_id)


#: Strong references: a worker rebuilt by configure_worker must not drop its given-up runs.
_PENDING: set[ShutdownRequeue] = set()


@atexit.register
def _requeue_at_exit() -> None:
    while _PENDING:
        pending = _PENDING.pop()
        try:
            pending.requeue()
        except Exception:
            log.exception("could not return abandoned jobs to the queue at exit")
