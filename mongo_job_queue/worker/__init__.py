"""The worker: starts and stops its services, nothing else.

:mod:`.build` builds the services, each with its collaborators. A start runs
them on threads named ``mjq-<worker id>-<role>`` (docs/architecture.rst says
what each runs): ``concurrency`` handler threads (:mod:`.executor`, writing
completions through :mod:`.completer`), the ``poller`` (:mod:`.poller`),
``maintenance`` (:mod:`.maintenance`: lease recovery, damaged documents, the
worker registry, the hand-back of stray claims in :mod:`.strays`) and the
heartbeat, ``leases`` (:mod:`.leases`), which is one per worker and outlives a
stop that timed out while a run goes on. Depending on the config and the jobs,
the group-commit flusher ``acks`` (``batch_acks``), the change-stream listener
``wakeup`` (:mod:`.wakeup`), the time-limit watchdog ``timelimits``
(:mod:`.timelimits`, which replaces an abandoned handler thread through
:mod:`.pool`) and the ``scheduler`` (:mod:`mongo_job_queue.schedules.service`)
run too.

:mod:`.threads` keeps the threads each start began, for the stop to wait for.
:mod:`.runner` runs a worker in the foreground of a worker process, with
signals; :mod:`.shutdown` returns the runs such a process gave up to the
queue when it exits. Every outcome write is fenced by the lease token (see
:mod:`mongo_job_queue.store`), so a worker that lost a lease can only log
the fact, never clobber the new owner.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from bson import ObjectId

from ..config import QueueConfig
from ..errors import QueueStateError
from ..handlers import HandlerRegistry
from ..middleware import MiddlewareChain
from ..model import LeaseOwner, job_log_extra
from ..schedules.service import Scheduler
from ..store import ClaimedJob, JobStore
from .build import build_services, completer_of, log_of, waker_of
from .chunks import chunk_runners
from .completer import Completer
from .executor import Executor, WorkQueue
from .inflight import InflightTable
from .leases import LeaseKeeper
from .poller import Poller
from .pool import HandlerPool
from .threads import WorkerThreads
from .timeouts import deadline_after, join, remaining
from .wakeup import Waker, WakeupChannel

__all__ = ["Worker", "job_log_extra"]

log = logging.getLogger(__name__)


class Worker:
    """Claims and runs jobs for one queue; owned by :class:`~mongo_job_queue.PersistentJobQueue`."""

    def __init__(
        self,
        store: JobStore,
        registry: HandlerRegistry,
        config: QueueConfig,
        *,
        logger: Optional[logging.Logger] = None,
        hooks: Optional[MiddlewareChain] = None,
    ) -> None:
        self.store = store
        self._registry = registry
        self.config = config
        self._logger = logger
        self.log = logger or log
        self.hooks = hooks if hooks is not None else MiddlewareChain(None)
        #: Wake-up channels beside the change stream (``queue.add_wakeup``), listened to from the next start.
        self.wakeups: list[WakeupChannel] = []
        #: Fires the queue's schedules while this worker runs (``run_schedules``).
        self.scheduler: Optional[Scheduler] = None
        self.table = InflightTable()
        self._lock = threading.Lock()
        # Notified (under _lock) when a stop() ends: a start() meanwhile waits for it.
        self._stopped = threading.Condition(self._lock)
        self._running = False
        self._reset_runtime_state()
        store.limits.on_release(self.notify)  # a freed limiter slot may let a held-back job run here

    def _reset_runtime_state(self) -> None:
        """Start afresh: at construction, and in a forked child (the parent's threads and runs are not its own)."""
        self.owner = LeaseOwner.current(self.config.worker_id)
        self.table.clear()
        self._stopping = threading.Event()
        self._stopping.set()
        self._wake = threading.Event()
        # Set while the poller waits with nothing to claim: only then does the
        # change stream read, so a busy worker pays no getMore per job.
        self._idle = threading.Event()
        self._work: WorkQueue = WorkQueue()
        self.threads = WorkerThreads(self._lock, self.log)
        self._waker: Optional[Waker] = None
        self._completer: Optional[Completer] = None
        #: The thread inside stop(), if any.
        self._stopper: Optional[threading.Thread] = None
        self._running = False
        keeper = getattr(self, "keeper", None)
        if keeper is not None:
            keeper.forget()
        self.keeper = LeaseKeeper(
            self.store, self.table, self.config, self.hooks, log=log_of(LeaseKeeper, self._logger)
        )
        self._build()

    def _build(self) -> None:
        """(Re)build the services from the current config, registry and owner."""
        self.keeper.set_config(self.config)
        self.keeper.name = f"mjq-{self.owner.worker_id}"
        self.services = build_services(
            self.store, self.registry, self.config, self.hooks, self.table, self.keeper, self.owner, self._logger
        )

    @property
    def executor(self) -> Executor:
        return self.services.executor

    @property
    def poller(self) -> Poller:
        return self.services.poller

    @property
    def registry(self) -> HandlerRegistry:
        return self._registry

    @registry.setter
    def registry(self, registry: HandlerRegistry) -> None:
        self._registry = registry
        self._build()

    def reconfigure(self, config: QueueConfig) -> None:
        """Take a new config before the next start; runs still finishing keep their heartbeat."""
        self.config = config
        self.owner = LeaseOwner.current(config.worker_id)
        self._build()

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started, not stopped, and its poller and handler threads alive."""
        return self._running and not self._stopping.is_set() and self.threads.alive_for_work()

    def start(self) -> None:
        """Start the services; no-op if already running (a start whose threads died is restarted).

        Waits for another thread's ``stop()`` to end; called from a thread that stop
        waits for, it raises :class:`~mongo_job_queue.errors.QueueStateError` instead.
        """
        if self._running and not self._stopping.is_set() and not self.running:
            self.log.error("worker %s: a worker thread died; restarting the worker", self.owner.worker_id)
            self.stop(0)
        with self._lock:
            while self._stopper is not None:
                me = threading.current_thread()
                if me is self._stopper or me in self.threads.started:
                    raise QueueStateError(
                        "start_polling() during stop() from a thread the stop waits for: start after stop() returns"
                    )
                self._stopped.wait()
            if self._running:
                return
            self._start_services()
        self.hooks.emit("on_worker_start")
        self.log.info(
            "worker %s started: concurrency=%d queues=%s types=%s",
            self.owner.worker_id,
            self.config.concurrency,
            ",".join(self.config.queues),
            ",".join(self.registry.types()) or "(none)",
        )

    def _start_services(self) -> None:
        # Each start gets its own stop event and work queue, handed to its
        # threads: threads of an earlier run that are still finishing a job
        # must neither consume this run's work nor outlive its stop.
        self._stopping = stopping = threading.Event()
        self._work = work = WorkQueue()
        name = f"mjq-{self.owner.worker_id}"
        self._completer = completer = completer_of(
            self.executor, self.store, self.table, self.config, self._logger, name
        )
        size = self.config.concurrency
        own = self.threads
        pool = HandlerPool(self.executor, (work, stopping, completer), size=size, name=name, on_replace=own.replaced)
        own.handlers = pool.threads
        own.poller = threading.Thread(
            target=self.poller.run, args=(work, stopping, self._wake, self._idle), name=f"{name}-poller", daemon=True
        )
        loop = self.services.maintenance(self.config, self.store.now, self._logger)
        own.maintenance = threading.Thread(target=loop.run, args=(stopping,), name=f"{name}-maintenance", daemon=True)
        threads = [*own.handlers, own.poller, own.maintenance]
        threads += [r.new_thread(stopping, name) for r in chunk_runners(self.registry, self.poller, own.replaced)]
        self._waker = waker_of(
            self.store, self.registry, self.config, self.notify, stopping, self._idle, self._logger, self.wakeups
        )
        own.waker = None
        if self._waker is not None:
            own.waker = threading.Thread(target=self._waker.run, name=f"{name}-wakeup", daemon=True)
            threads.append(own.waker)
        own.scheduler = None
        if self.scheduler is not None and self.config.run_schedules:
            threads.append(self._new_scheduler_thread(self.scheduler, stopping))
        self._running = True
        self.keeper.start()
        # The flusher (batch_acks) started with its completer: tracked too, so a stop joins and names it.
        own.track(threads if completer.thread is None else [*threads, completer.thread])
        for thread in threads:
            thread.start()

    def stop(
        self,
        timeout: Optional[float],
        *,
        requeue_running: bool = False,
        force: Optional[threading.Event] = None,
    ) -> bool:
        """Stop claiming now, wait up to ``timeout`` s (None or inf: forever) for running jobs; True if all finished.

        True also means every thread this start began has ended (but a handler
        thread abandoned to its time limit, never waited for, nor the heartbeat
        that keeps its limiter slots until it returns). Jobs still
        running at the timeout (or once ``force`` is set) keep their lease
        while this process lives; with ``requeue_running`` they go back to the
        queue when it exits (:mod:`.shutdown`). See docs/reliability.rst,
        "Graceful stop".
        """
        deadline = deadline_after(timeout)
        with self._lock:
            if not self._running:
                return True
            self._stopper = threading.current_thread()
            with self.table.cond:
                self._stopping.set()
                self.table.cond.notify_all()  # a poller waiting for a free slot sees it at once
            self._wake.set()
        try:
            # _running stays True until the end, and a start() meanwhile waits for
            # the end, rather than adding services this stop would then tear down.
            if self._waker is not None:
                self._waker.close()  # ends a change-stream read that would wait on the server
            if self.scheduler is not None:
                self.scheduler.wake()
            self.log.info("worker %s stopping: no new claims", self.owner.worker_id)
            # The poller may be inside a claim; it hands back whatever that claim
            # returns, so waiting for it shares the one deadline (and the force).
            if self.threads.poller is not None:
                join(self.threads.poller, deadline, force)
            if self.table.busy():
                self.log.info(
                    "worker %s waiting %s for %d running job(s)",
                    self.owner.worker_id,
                    "without a time limit" if deadline == float("inf") else f"up to {remaining(deadline):.1f}s",
                    len(self.table),
                )
            finished = not self.table.busy()
            while not finished and remaining(deadline) > 0 and not (force and force.is_set()):
                # Short waits, so that a forcing signal is noticed promptly.
                finished = self.table.wait_idle(min(0.1, remaining(deadline)))
            for _ in self.threads.handlers:
                self._work.put(None)  # handler threads exit after their current job
            if self._completer is not None:
                # Whatever is still buffered is written now; a handler finishing
                # later records its outcome directly.
                completer, self._completer = self._completer, None
                completer.close(max(1.0, remaining(deadline)))
            self.store.finals.close(max(1.0, remaining(deadline)))  # e.g. the batch checks of the last final writes
            self.keeper.release()
            self._join_services(deadline, finished, force)
            self.services.strays.final()
            self.services.presence.stopped()
            self.hooks.emit("on_worker_stop")
            running = self.table.running()
            if finished:
                self.log.info("worker %s stopped: all jobs finished", self.owner.worker_id)
            elif requeue_running:
                self.log.warning(
                    "worker %s stopped with %d job(s) still running; they return to the queue when this process exits",
                    self.owner.worker_id,
                    len(running),
                )
                self.services.shutdown.abandon(running)
            else:
                self.log.warning(
                    "worker %s stopped with %d job(s) still running; their leases are kept while this "
                    "process lives and recovered by lease expiry after it exits",
                    self.owner.worker_id,
                    len(running),
                )
        finally:
            with self._lock:
                self._running = False
                self._stopper = None
                self._stopped.notify_all()
        return finished and not self._alive_threads()

    def _join_services(self, deadline: float, finished: bool, force: Optional[threading.Event]) -> None:
        self.threads.join(deadline, finished, force, self.keeper.waited_for())
        alive = self._alive_threads()
        if alive:
            self.log.warning(
                "worker %s: thread(s) still running after stop: %s",
                self.owner.worker_id,
                ", ".join(t.name for t in alive),
            )

    def _alive_threads(self) -> list[threading.Thread]:
        """Threads of this worker still running: of any start so far, and the heartbeat (unless it beats only for
        an abandoned handler's limiter slots, see :meth:`.leases.LeaseKeeper.waited_for`)."""
        return self.threads.alive(self.keeper.waited_for())

    def requeue_abandoned(self) -> None:
        """Return runs given up by ``stop(requeue_running=True)`` that still run; done at process exit."""
        self.services.shutdown.requeue()

    def _new_scheduler_thread(self, scheduler: Scheduler, stopping: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=scheduler.run, args=(stopping,), name=f"mjq-{self.owner.worker_id}-scheduler", daemon=True
        )
        self.threads.scheduler = thread
        return thread

    def start_scheduler(self) -> None:
        """Start firing schedules in a running worker that had none when it started; no-op otherwise."""
        with self._lock:
            idle = self._running and self.threads.scheduler is None and self.config.run_schedules
            if not idle or self.scheduler is None:
                return
            thread = self._new_scheduler_thread(self.scheduler, self._stopping)
            self.threads.track([thread])
            thread.start()

    @property
    def listening_for_jobs(self) -> bool:
        """Whether a change stream currently wakes this worker when jobs arrive."""
        waker = self._waker
        return waker is not None and self._running and waker.listening.is_set()

    def notify(self) -> None:
        """Wake an idle poller, e.g. after a local enqueue of a due job."""
        self._wake.set()

    # -- single steps (run_once, eager runs, admin calls) --------------------

    def run_job_now(self, job_id: ObjectId) -> bool:
        """Claim a specific pending job and run it in the calling thread; False if it was not pending."""
        claimed = self.store.jobs.claim_job(job_id, self.owner)
        if claimed is None:
            return False
        self.poller.announce([claimed])
        self.process(claimed)
        return True

    def process(self, claimed: ClaimedJob) -> None:
        """Run the handler of a claimed job in the calling thread and write its outcome."""
        self.executor.process(claimed)

    def claim_one(self, abort: Optional[threading.Event] = None) -> ClaimedJob | None:
        return self.poller.claim_one(abort)

    def claim_some(self, free: int, abort: Optional[threading.Event] = None) -> list[ClaimedJob]:
        return self.poller.claim_some(free, abort)

    def claim_scope(self) -> tuple[list[str], list[str]]:
        return self.poller.claim_scope()

    def forget_pause_state(self) -> None:
        self.poller.forget_pause_state()

    def confirm_slow_claims(self, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
        return self.keeper.confirm_slow_claims(claimed)

    def renew_leases(self) -> None:
        self.keeper.renew_leases()

    def recover_orphans(self) -> tuple[int, int]:
        """One lease-recovery sweep now; ``(requeued, failed)``."""
        return self.services.rescuer.run_once(self.store.now())
