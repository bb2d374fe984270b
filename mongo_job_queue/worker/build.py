"""The worker's wiring: its services, each built with its collaborators from the config, registry and owner.

:class:`~mongo_job_queue.worker.Worker` builds them at construction and again
when its config or handler registry changes, and runs them on its threads.
The heartbeat (:mod:`.leases`) and the in-flight table are not rebuilt: runs
still finishing after a timed-out stop keep both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from ..config import QueueConfig
from ..handlers import HandlerRegistry
from ..middleware import MiddlewareChain
from ..model import LeaseOwner
from ..store import JobStore
from ..store.dependencies import Dependencies
from ..store.finals import SWEEP_MIN_INTERVAL_S
from ..store.key_sweep import SWEEP_INTERVAL_S as KEYS_SWEEP_INTERVAL_S
from ..store.limiter_sweep import SWEEP_INTERVAL_S
from .completer import Completer, GroupCompleter
from .executor import Executor
from .inflight import InflightTable
from .leases import LeaseKeeper
from .maintenance import Hygiene, MaintenanceLoop, Quarantiner, Rescuer, Service
from .poller import Poller
from .registry import WorkerPresence
from .shutdown import ShutdownRequeue
from .strays import StrayReturner
from .timelimits import TimeLimits
from .wakeup import ChangeStreamWaker, Waker, Wakers, WakeupChannel, namespace_of

__all__ = ["IDLE_CATCH_UP_S", "Services", "build_services", "completer_of", "log_of", "waker_of"]

#: While a worker idles, the sweeps that catch up on notices lost to a crash run this often.
IDLE_CATCH_UP_S = 600.0


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
    #: Hands back the jobs leased by claims whose reply was lost (store/strays.py).
    strays: StrayReturner
    #: Re-checks blocked jobs for release notices lost to a crash (``store.dependencies.sweep``).
    dependencies: Dependencies
    #: The catch-up steps of the listeners of final writes (a batch's reconciler), see store/finals.py.
    finals_sweep: Callable[[datetime], object]
    #: Deletes the limiter documents a fresh one would replace, a second at most (``store.limiter_sweep``).
    limiters_sweep: Callable[[datetime], object]
    #: With a declared shard key, deletes key documents whose job is gone (``store.keys``).
    keys_sweep: Callable[[datetime], object]

    def maintenance(
        self, config: QueueConfig, now: Callable[[], datetime], logger: Optional[logging.Logger]
    ) -> MaintenanceLoop:
        """The maintenance thread's loop: each maintenance service's step at its interval.

        The lease recovery sweep sleeps until the next lease expires, at most
        ``sweep_interval_ms``; while the worker idles on a database-wide
        change stream, at most ``lease_ms + sweep_interval_ms``: a job claimed
        just after its read expires a lease later, and the stream tells of a
        claim with a shorter lease, which makes it read again. The catch-up
        sweeps of lost notices run every :data:`IDLE_CATCH_UP_S` then
        (docs/performance.rst, "Idle cost"); the sweep of idle limiter
        documents every :data:`~..store.limiter_sweep.SWEEP_INTERVAL_S`, always; with a
        declared shard key, the sweep of left key documents as often (:mod:`..store.keys`).
        """
        rescue_cap = (config.lease_ms + config.sweep_interval_ms) / 1000
        return MaintenanceLoop(
            [
                # Before the lease recovery sweep: a stray's lease, once expired, would be recovered with its
                # attempt counted.
                Service("stray-claim hand-back", config.heartbeat_interval_ms / 1000, self.strays.run_once),
                Service(
                    "lease recovery sweep",
                    config.sweep_interval_ms / 1000,
                    self.rescuer.paced_sweep,
                    paced=True,
                    idle_interval_s=rescue_cap,
                ),
                Service("malformed-job sweep", config.hygiene_interval_ms / 1000, self.hygiene.run_once),
                Service(
                    "blocked-job sweep",
                    config.dependency_sweep_interval_ms / 1000,
                    self.dependencies.sweep,
                    idle_interval_s=IDLE_CATCH_UP_S,
                ),
                Service("worker registry", self.presence.interval_s, self.presence.run_once),
                Service(
                    "final-write sweeps",
                    max(config.sweep_interval_ms / 1000, SWEEP_MIN_INTERVAL_S),
                    self.finals_sweep,
                    idle_interval_s=IDLE_CATCH_UP_S,
                ),
                Service("limiter sweep", SWEEP_INTERVAL_S, self.limiters_sweep, paced=True),
                Service("key-document sweep", KEYS_SWEEP_INTERVAL_S, self.keys_sweep, paced=True),
            ],
            now,
            logger,
            idle=lambda: self.poller.idle,
        )


def completer_of(
    executor: Executor,
    store: JobStore,
    table: InflightTable,
    config: QueueConfig,
    logger: Optional[logging.Logger],
    name: str,
) -> Completer:
    """Where one start's handler threads write completions: a group-commit flusher (``batch_acks``), or each its own."""
    if config.batch_acks:
        return GroupCompleter(store, table, executor.report_completion, logger=logger, name=name)
    return executor.inline


def waker_of(
    store: JobStore,
    registry: HandlerRegistry,
    config: QueueConfig,
    notify: Callable[[], None],
    stopping: threading.Event,
    idle: threading.Event,
    logger: Optional[logging.Logger],
    channels: Sequence[WakeupChannel] = (),
) -> Optional[Waker]:
    """One start's listeners that wake the idle poller: the change stream (``change_stream_wakeups``), the channels."""
    wakers: list[Waker] = []
    if config.change_stream_wakeups:
        wakers.append(
            ChangeStreamWaker(
                store,
                registry.types(),
                config.queues,
                notify,
                stopping,
                max_await_ms=config.change_stream_max_await_ms,
                idle=idle,
                logger=logger,
                lease_ms=config.lease_ms,
            )
        )
    for channel in channels:
        wakers.append(channel.listener(namespace_of(store), registry.types(), config.queues, notify, stopping, logger))
    if len(wakers) <= 1:
        return wakers[0] if wakers else None
    return Wakers(wakers, stopping)


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
    limits = TimeLimits(config, hooks, log_of(TimeLimits, logger))
    executor = Executor(store, registry, config, hooks, table, quarantiner, limits, log=log_of(Executor, logger))
    executor.limits.name = keeper.name  # the time-limit watchdog's thread: mjq-<worker id>-timelimits
    strays = StrayReturner(store, executor, log_of(StrayReturner, logger))
    return Services(
        executor=executor,
        poller=Poller(store, registry, config, hooks, table, keeper, executor, owner, log=log_of(Poller, logger)),
        rescuer=Rescuer(store, registry, hooks, quarantiner, strays.take, log_of(Rescuer, logger)),
        hygiene=Hygiene(store, quarantiner),
        presence=WorkerPresence(store, config, owner, table, registry),
        shutdown=ShutdownRequeue(executor, table, owner.worker_id),
        strays=strays,
        dependencies=store.dependencies,
        finals_sweep=store.finals.sweep,
        limiters_sweep=store.limits.sweep_step,
        keys_sweep=store.keys.step,
    )
