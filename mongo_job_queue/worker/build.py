"""The worker's wiring: its services, each built with its collaborators from the config, registry and owner.

:class:`~mongo_job_queue.worker.Worker` builds them at construction and again
when its config or handler registry changes, and runs them on its threads.
The heartbeat (:mod:`.leases`) and the in-flight table are not rebuilt: runs
still finishing after a timed-out stop keep both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from ..config import QueueConfig
from ..handlers import HandlerRegistry
from ..middleware import MiddlewareChain
from ..model import LeaseOwner
from ..store import JobStore
from .executor import Executor
from .inflight import InflightTable
from .leases import LeaseKeeper
from .maintenance import Hygiene, MaintenanceLoop, Quarantiner, Rescuer, Service
from .poller import Poller
from .registry import WorkerPresence
from .shutdown import ShutdownRequeue

__all__ = ["Services", "build_services", "log_of"]


def log_of(component: type, logger: Optional[logging.Logger]) -> logging.Logger:
    """Where a component logs: the app's logger if it gave one, else the component's module logger."""
    return logger or logging.getLogger(component.__module__)


@dataclass(frozen=True)
class Services:
    """One build of a worker's services."""

    executor: Executor
    poller: Poller
    rescuer: Rescuer
    hygiene: Hygiene
    presence: WorkerPresence
    shutdown: ShutdownRequeue

    def maintenance(
        self, config: QueueConfig, now: Callable[[], datetime], logger: Optional[logging.Logger]
    ) -> MaintenanceLoop:
        """The maintenance thread's loop: each maintenance service's ``run_once`` at its interval."""
        return MaintenanceLoop(
            [
                Service("lease recovery sweep", config.sweep_interval_ms / 1000, self.rescuer.run_once),
                Service("malformed-job sweep", config.hygiene_interval_ms / 1000, self.hygiene.run_once),
                Service("worker registry", self.presence.interval_s, self.presence.run_once),
            ],
            now,
            logger,
        )


def build_services(
    store: JobStore,
    registry: HandlerRegistry,
    config: QueueConfig,
    hooks: MiddlewareChain,
    table: InflightTable,
    keeper: LeaseKeeper,
    owner: LeaseOwner,
    logger: Optional[logging.Logger] = None,
) -> Services:
    """Build every service of a worker with its collaborators."""
    quarantiner = Quarantiner(store, hooks, log_of(Quarantiner, logger))
    executor = Executor(store, registry, config, hooks, table, quarantiner, logger=logger)
    return Services(
        executor=executor,
        poller=Poller(store, registry, config, hooks, table, keeper, executor, owner, log=log_of(Poller, logger)),
        rescuer=Rescuer(store, registry, hooks, quarantiner, log_of(Rescuer, logger)),
        hygiene=Hygiene(store, quarantiner),
        presence=WorkerPresence(store, config, owner, table, registry),
        shutdown=ShutdownRequeue(executor, table, owner.worker_id),
    )
