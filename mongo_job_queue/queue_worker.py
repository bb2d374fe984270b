"""This process's worker as the queue drives it: started after its checks, configured before it starts, or run inline.

:class:`~mongo_job_queue.PersistentJobQueue` delegates ``start_polling``,
``configure_worker``, ``run_once`` and ``drain`` here (they are documented
there), and the one step every use of the collection from this object waits
for: the model's indexes, ensured once (:meth:`QueueWorker.prepare`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Optional

from bson import ObjectId

from .after_fork import renew_in_child
from .builder import JobBuilder
from .config import QueueConfig, load_config
from .errors import QueueStateError
from .handlers import HandlerFn, HandlerRegistry
from .store import JobStore
from .worker import Worker

__all__ = ["QueueWorker"]

log = logging.getLogger(__name__)


class QueueWorker:
    """Starts, configures and steps the worker of one queue object in this process."""

    def __init__(self, store: JobStore, registry: HandlerRegistry, worker: Worker, builder: JobBuilder[Any]) -> None:
        self.store = store
        self.registry = registry
        self.worker = worker
        #: Shares the config that :meth:`configure` replaces.
        self.builder = builder
        #: Whether this object ensured the indexes (a forked child does it again).
        self.indexes_ensured = False
        renew_in_child(self)

    def ensure_indexes(self) -> None:
        self.store.ensure_indexes()
        self.indexes_ensured = True

    def prepare(self) -> None:
        """The model's indexes before this object's first own use of the collection."""
        if not self.indexes_ensured:
            self.ensure_indexes()

    def start(self) -> None:
        if self.worker.running:
            return
        if not len(self.registry):
            raise QueueStateError("start_polling() with no handler registered: register handlers first")
        self.prepare()
        problem = self.store.admin.write_concern_problem()
        if problem:
            log.warning("unsafe write concern: %s", problem)
        self.worker.start()

    def configure(
        self,
        config: QueueConfig,
        job_types: Optional[Iterable[str]],
        wrap: Optional[Callable[[HandlerFn], HandlerFn]],
        changes: dict[str, Any],
    ) -> QueueConfig:
        """Apply ``configure_worker()``'s arguments to ``config`` and the worker; return the config now in force."""
        if self.worker.running:
            raise QueueStateError("configure_worker() while the worker is running: stop it first")
        if changes:
            config = self.store.config = self.builder.config = load_config(changes, base=config)
            # The lease owner may name a new worker_id; runs still finishing
            # after a timed-out stop keep their heartbeat.
            self.worker.reconfigure(config)
        if job_types is not None or wrap is not None:
            self.worker.registry = self.registry.subset(job_types, wrap=wrap)
        return config

    def run_once(self) -> Optional[ObjectId]:
        """Claim one due job and run it in the calling thread; its id, or None if none was due."""
        self.prepare()
        claimed = self.worker.claim_one()
        if claimed is None:
            return None
        self.worker.process(claimed)
        return claimed.id

    def drain(self, max_jobs: Optional[int]) -> int:
        ran = 0
        while (max_jobs is None or ran < max_jobs) and self.run_once() is not None:
            ran += 1
        return ran

    def _after_fork_in_child(self) -> None:
        # The parent's threads do not exist here and its leases are its own.
        self.worker._reset_runtime_state()
        if self.worker.scheduler is not None:
            self.worker.scheduler._after_fork_in_child()
        self.indexes_ensured = False
