"""The components a :class:`~mongo_job_queue.PersistentJobQueue` delegates to, built in one place.

:func:`build_parts` gives each component its collaborators (the store, the
worker, the builder, the enqueuer), as ``worker/build.py`` does for a
worker's services; the queue keeps the parts and only forwards to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

from .batches import Batches, BatchTracker
from .builder import JobBuilder
from .clock import Clock
from .config import QueueConfig
from .enqueue import EagerFlags, Enqueuer
from .handlers import HandlerRegistry
from .middleware import MiddlewareChain
from .model import BaseJob
from .queue_admin import QueueAdmin
from .queue_worker import QueueWorker
from .schedules.manager import ScheduleManager
from .store import JobStore
from .store.locks import MongoLocks
from .worker import Worker

__all__ = ["QueueParts", "build_parts"]

J = TypeVar("J", bound=BaseJob)


@dataclass(eq=False)
class QueueParts(Generic[J]):
    """One queue's components."""

    store: JobStore
    worker: Worker
    local: QueueWorker
    enqueuer: Enqueuer[J]
    admin: QueueAdmin[J]
    schedules: ScheduleManager
    locks: MongoLocks
    batches: Batches[J]


def build_parts(
    job_model: type[J],
    config: QueueConfig,
    registry: HandlerRegistry,
    hooks: MiddlewareChain,
    flags: EagerFlags,
    *,
    clock: Clock,
    sleep: Optional[Callable[[float], None]],
    logger: Optional[logging.Logger],
) -> QueueParts[J]:
    """The components of a queue over ``job_model``; ``flags`` are its testing switches, read at each enqueue."""
    store = JobStore(job_model, config, clock=clock, sleep=sleep, logger=logger)
    worker = Worker(store, registry, config, logger=logger, hooks=hooks)
    builder = JobBuilder(job_model, config, registry)
    local = QueueWorker(store, registry, worker, builder)
    enqueuer = Enqueuer(builder, store, worker, hooks, flags=flags)
    schedules = ScheduleManager(store, worker, enqueuer, registry, prepare=local.prepare)
    store.dependencies.on_release = worker.notify  # a released job need not wait for a poll
    batches = Batches(store, builder, enqueuer, BatchTracker(store, enqueuer, flags, logger))
    admin = QueueAdmin(job_model, store, worker, hooks)
    return QueueParts(store, worker, local, enqueuer, admin, schedules, MongoLocks(store), batches)
