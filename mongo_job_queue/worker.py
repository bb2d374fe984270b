"""The worker: a poller, a fixed pool of handler threads and a lease keeper.

Three kinds of daemon thread cooperate:

* the **poller** claims one job per free handler thread (never more: no
  prefetch, so a crash strands at most ``concurrency`` jobs) and backs off
  exponentially while the queue is empty;
* ``concurrency`` **handler threads** run jobs and write their outcome;
* the **lease keeper** renews the lease of every running job well before it
  expires and periodically returns expired leases of crashed workers to the
  queue;
* the **scheduler**, when the queue has one, enqueues the jobs of due fire
  times (see :mod:`.scheduler`).

Every outcome write is fenced by the lease token (see :mod:`.store`), so a
worker that lost a lease can only log the fact, never clobber the new owner.
"""

from __future__ import annotations

import logging
import math
import queue as queue_mod
import threading
import time
from typing import Any, Optional

import bson
from bson import ObjectId

from .acks import AckBuffer
from .clock import after_ms
from .config import QueueConfig
from .context import JobContext
from .context import RunState as _InFlight
from .errors import FailJob, JobCancelled, WorkerShutdown
from .failures import error_record, safe_str, truncate
from .handlers import Handler, HandlerRegistry
from .lease_keeper import LeaseKeeper
from .middleware import MiddlewareChain
from .model import BaseJob
from .records import UnstorableResult, job_log_extra
from .retry_limit import exhausted, max_retries_of
from .scheduler import Scheduler
from .store import ClaimedJob, JobStore, LeaseOwnerInfo
from .store_control import PauseState
from .validation import check_value, stored_job_problems
from .wakeup import ChangeStreamWaker

__all__ = ["Worker", "error_record", "job_log_extra"]

log = logging.getLogger(__name__)


class Worker(LeaseKeeper):
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
        self.registry = registry
        self.config = config
        self.log = logger or log
        self.hooks = hooks if hooks is not None else MiddlewareChain(None)
        #: Fires the queue's schedules while this worker runs (``run_schedules``).
        self.scheduler: Optional[Scheduler] = None
        self._reset_runtime_state()

    def _reset_runtime_state(self) -> None:
        # Also called in a forked child: the parent's threads do not exist
        # there, and the child's leases must name the child's pid.
        self.owner = LeaseOwnerInfo.current(self.config.worker_id)
        self._lock = threading.Condition()
        self._inflight: dict[ObjectId, _InFlight] = {}
        # Finished jobs whose completion is buffered in the acker: their
        # leases are renewed until the write lands.
        self._acking: dict[ObjectId, ClaimedJob] = {}
        self._acker: Optional[AckBuffer] = None
        self._waker: Optional[ChangeStreamWaker] = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        # Set while the poller waits with nothing to claim: only then does the
        # change stream read, so a busy worker pays no getMore per job.
        self._idle = threading.Event()
        self._work: queue_mod.SimpleQueue[Optional[ClaimedJob]] = queue_mod.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._scheduler_thread: Optional[threading.Thread] = None
        self._running = False
        self._paused = PauseState()
        self._pause_read_at = -math.inf

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Start poller, handler threads and lease keeper; no-op if already running."""
        with self._lock:
            if self._running:
                return
            # Each start gets its own stop event and work queue, handed to its
            # threads: threads of an earlier run that are still finishing a
            # job must neither consume this run's work nor outlive its stop.
            self._stopping = stopping = threading.Event()
            work: queue_mod.SimpleQueue[Optional[ClaimedJob]] = queue_mod.SimpleQueue()
            self._work = work
            self._running = True
            name = self.owner.worker_id
            self._threads = [
                threading.Thread(
                    target=self._handler_loop, args=(work, stopping), name=f"mjq-{name}-handler-{i}", daemon=True
                )
                for i in range(self.config.concurrency)
            ]
            self._threads.append(
                threading.Thread(target=self._poll_loop, args=(work, stopping), name=f"mjq-{name}-poller", daemon=True)
            )
            self._threads.append(
                threading.Thread(target=self._lease_loop, args=(stopping,), name=f"mjq-{name}-leases", daemon=True)
            )
            if self.config.change_stream_wakeups:
                waker = ChangeStreamWaker(
                    self.store,
                    self.registry.types(),
                    self.config.queues,
                    self.notify,
                    stopping,
                    max_await_ms=self.config.change_stream_max_await_ms,
                    idle=self._idle,
                    logger=self.log if self.log is not log else None,
                )
                self._waker = waker
                # Not joined on stop: it leaves within one max_await after the stop event.
                self._threads.append(threading.Thread(target=waker.run, name=f"mjq-{name}-wakeup", daemon=True))
            self._scheduler_thread = None
            if self.scheduler is not None and self.config.run_schedules:
                self._threads.append(self._new_scheduler_thread(self.scheduler, stopping))
            if self.config.batch_acks:
                self._acker = AckBuffer(self.store, self._on_acked, logger=self.log if self.log is not log else None)
                self._acker.start()
            for thread in self._threads:
                thread.start()
        self.hooks.emit("on_worker_start")
        self.log.info(
            "worker %s started: concurrency=%d queues=%s types=%s",
            self.owner.worker_id,
            self.config.concurrency,
            ",".join(self.config.queues),
            ",".join(self.registry.types()) or "(none)",
        )

    def stop(
        self,
        timeout: float = 30.0,
        *,
        requeue_running: bool = False,
        force: Optional[threading.Event] = None,
    ) -> bool:
        """Stop claiming now, wait up to ``timeout`` s for running jobs; True if all finished.

        Jobs claimed but not yet started are handed back to ``pending``
        without counting the attempt. What happens to jobs still running at
        the timeout (or as soon as ``force`` is set) depends on the caller:

        * ``requeue_running=False`` (an app stopping its in-process worker):
          they keep their lease while this process lives, so no other worker
          runs them twice, and are recovered by lease expiry after it exits.
        * ``requeue_running=True`` (a worker process about to exit): they go
          back to ``pending`` at once, the attempt recorded with a
          :class:`~mongo_job_queue.WorkerShutdown` error, or to ``failed`` if
          it was their last attempt. Their handlers' late outcomes are fenced.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if not self._running:
                return True
            self._stopping.set()
            self._wake.set()
        if self.scheduler is not None:
            self.scheduler.wake()
        self.log.info("worker %s stopping: no new claims", self.owner.worker_id)
        # The poller may be inside a claim; it hands back whatever that claim
        # returns (see _dispatch), so waiting for it shares the one deadline.
        self._threads[self.config.concurrency].join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._inflight:
                self.log.info(
                    "worker %s waiting up to %.1fs for %d running job(s)",
                    self.owner.worker_id,
                    max(0.0, deadline - time.monotonic()),
                    len(self._inflight),
                )
            finished = not self._inflight and not self._acking
            while not finished and time.monotonic() < deadline and not (force and force.is_set()):
                # Short waits, so that a forcing signal is noticed promptly.
                finished = self._lock.wait_for(
                    lambda: not self._inflight and not self._acking,
                    timeout=min(0.1, max(0.0, deadline - time.monotonic())),
                )
            running = [entry.claimed for entry in self._inflight.values()]
            if requeue_running:
                for entry in self._inflight.values():
                    entry.lease_lost.set()  # given up on purpose: stop renewing it
            self._running = False
        for _ in range(self.config.concurrency):
            self._work.put(None)  # handler threads exit after their current job
        if self._acker is not None:
            # Whatever is still buffered is written now; a handler finishing
            # later records its outcome directly.
            acker, self._acker = self._acker, None
            acker.close(max(1.0, deadline - time.monotonic()))
        if self._scheduler_thread is not None:
            # A tick in progress gets the same deadline; one cut short leaves its fire times due.
            self._scheduler_thread.join(max(1.0, deadline - time.monotonic()))
        self.hooks.emit("on_worker_stop")
        if finished:
            self.log.info("worker %s stopped: all jobs finished", self.owner.worker_id)
        elif requeue_running:
            self._requeue_on_shutdown(running)
        else:
            self.log.warning(
                "worker %s stopped with %d job(s) still running; their leases are kept while this "
                "process lives and recovered by lease expiry after it exits",
                self.owner.worker_id,
                len(running),
            )
        return finished

    def _requeue_on_shutdown(self, running: list[ClaimedJob]) -> None:
        self.log.warning(
            "worker %s stopped with %d job(s) still running; returning them to the queue",
            self.owner.worker_id,
            len(running),
        )
        for claimed in running:
            doc = claimed.doc
            attempts = int(doc["attempts"])
            exc = WorkerShutdown(f"worker {self.owner.worker_id} shut down during attempt {attempts}")
            record = error_record(exc, attempt=attempts, at=self.store.now(), token=claimed.token, config=self.config)
            try:
                if attempts >= max_retries_of(doc, self.registry.get(doc["type"])) + 1:
                    written = self.store.fail(claimed, record)
                else:
                    written = self.store.reschedule(claimed, self.store.now(), record) or self._cancel(claimed)
            except Exception:  # noqa: BLE001 - lease expiry recovers it if this write fails
                self._log_job(logging.ERROR, doc, "could not return to the queue on shutdown", exc_info=True)
                continue
            if written:
                self._log_job(logging.WARNING, doc, "returned to the queue on shutdown (attempt counted)")

    def _new_scheduler_thread(self, scheduler: Scheduler, stopping: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=scheduler.run, args=(stopping,), name=f"mjq-{self.owner.worker_id}-scheduler", daemon=True
        )
        self._scheduler_thread = thread
        return thread

    def start_scheduler(self) -> None:
        """Start firing schedules in a running worker that had none when it started; no-op otherwise."""
        with self._lock:
            idle = self._running and self._scheduler_thread is None and self.config.run_schedules
            if not idle or self.scheduler is None:
                return
            thread = self._new_scheduler_thread(self.scheduler, self._stopping)
            self._threads.append(thread)
            thread.start()

    @property
    def listening_for_jobs(self) -> bool:
        """Whether a change stream currently wakes this worker when jobs arrive."""
        waker = self._waker
        return waker is not None and self._running and waker.listening.is_set()

    def notify(self) -> None:
        """Wake an idle poller, e.g. after a local enqueue of a due job."""
        self._wake.set()

    # -- threads ------------------------------------------------------------

    def _poll_loop(self, work: queue_mod.SimpleQueue[Optional[ClaimedJob]], stopping: threading.Event) -> None:
        base = self.config.poll_interval_base_ms / 1000
        interval = base
        while not stopping.is_set():
            with self._lock:
                self._lock.wait_for(
                    lambda: len(self._inflight) < self.config.concurrency or stopping.is_set(), timeout=base
                )
                free = self.config.concurrency - len(self._inflight)
            if stopping.is_set() or free <= 0:
                continue
            # Cleared before the claim, so a notify() that arrives while the
            # claim is running is not lost: the wait below returns at once.
            self._wake.clear()
            try:
                claimed = self.claim_some(free, abort=stopping)
            except Exception:
                self.log.exception("claim failed; backing off %.1fs", interval)
                claimed = []
            if claimed:
                self._idle.clear()
                interval = base  # work appeared: snap back to the base interval
                for job in self.confirm_slow_claims(claimed):
                    self._dispatch(job, work, stopping)
                continue
            self._idle.set()
            self._wake.wait(interval)
            interval = min(interval * 2, self.config.poll_interval_max_ms / 1000)

    def _dispatch(
        self, claimed: ClaimedJob, work: queue_mod.SimpleQueue[Optional[ClaimedJob]], stopping: threading.Event
    ) -> None:
        # Checked under the lock that stop() sets the flag with: either the job
        # is in flight (stop() waits for it and it is queued before the exit
        # sentinels) or stop() began first and the poller hands it back here.
        with self._lock:
            if not stopping.is_set():
                self._inflight[claimed.id] = _InFlight(claimed)
                work.put(claimed)
                self._log_job(logging.DEBUG, claimed.doc, "claimed")
                return
        self._hand_back(claimed)

    def _handler_loop(self, work: queue_mod.SimpleQueue[Optional[ClaimedJob]], stopping: threading.Event) -> None:
        while True:
            claimed = work.get()
            if claimed is None:
                return
            try:
                if stopping.is_set():
                    self._hand_back(claimed)
                else:
                    with self._lock:
                        self._inflight[claimed.id].started = True
                    self.process(claimed, ack_async=True)
            except BaseException:  # noqa: BLE001 - the pool keeps its size, whatever happens
                self._log_job(logging.ERROR, claimed.doc, "unexpected error in handler thread", exc_info=True)
            finally:
                with self._lock:
                    self._inflight.pop(claimed.id, None)
                    self._lock.notify_all()

    def _hand_back(self, claimed: ClaimedJob) -> None:
        if self.store.release(claimed):
            self._log_job(logging.INFO, claimed.doc, "handed back unstarted job on stop")
        elif self._cancel(claimed):
            pass  # its cancellation had been requested: cancelled, not handed back
        else:
            self._log_job(logging.WARNING, claimed.doc, "could not hand back job: lease already lost")

    def _log_job(self, level: int, doc: dict[str, Any], msg: str, *args: Any, exc_info: bool = False) -> None:
        # The job's identity goes both into the text, for plain formatters,
        # and into ``extra``, for JSON formatters.
        if self.log.isEnabledFor(level):
            self.log.log(
                level,
                f"job %s (%s, queue %s, attempt %s): {msg}",  # noqa: G004 - literal templates; args stay lazy
                doc.get("_id"),
                doc.get("type"),
                doc.get("queue"),
                doc.get("attempts"),
                *args,
                extra=job_log_extra(doc),
                exc_info=exc_info,
            )

    # -- running one job ----------------------------------------------------

    def run_job_now(self, job_id: ObjectId) -> bool:
        """Claim a specific pending job and run it in the calling thread; False if it was not pending."""
        claimed = self.store.claim_job(job_id, self.owner)
        if claimed is None:
            return False
        self.hooks.emit("after_claim", claimed.doc)
        self.process(claimed)
        return True

    def claim_some(self, free: int, abort: Optional[threading.Event] = None) -> list[ClaimedJob]:
        """Claim up to ``free`` due jobs: one batch with ``batch_claims``, else one job."""
        types, queues = self.claim_scope()
        if self.config.batch_claims and free > 1:
            batch = self.store.claim_batch(types, queues, self.owner, free, abort=abort)
            for claimed in batch:
                self.hooks.emit("after_claim", claimed.doc)
            return batch
        one = self.claim_one(abort=abort)
        return [one] if one is not None else []

    def claim_scope(self) -> tuple[list[str], list[str]]:
        """The job types and queues to claim from: registered and configured, less the paused ones.

        The pause state is read at most every ``pause_refresh_ms``, not per
        claim, and only narrows the claim's ``$in`` lists, so the claim index
        serves the claim exactly as before.
        """
        if time.monotonic() >= self._pause_read_at + self.config.pause_refresh_ms / 1000:
            try:
                self._paused = self.store.pause_state()
                self._pause_read_at = time.monotonic()
            except Exception:  # keep the last known state; the claim reports a lasting outage
                self.log.warning("could not read the pause state; using the last one", exc_info=True)
        paused = self._paused
        types = [t for t in self.registry.types() if t not in paused.types]
        queues = [q for q in self.config.queues if q not in paused.queues]
        return types, queues

    def forget_pause_state(self) -> None:
        """Read the pause state again before the next claim (after a change made in this process)."""
        self._pause_read_at = -math.inf

    def claim_one(self, abort: Optional[threading.Event] = None) -> ClaimedJob | None:
        """Claim one due job of the registered types; ``abort`` cuts retry sleeps short."""
        types, queues = self.claim_scope()
        claimed = self.store.claim(types, queues, self.owner, abort=abort)
        if claimed is not None:
            self.hooks.emit("after_claim", claimed.doc)
        return claimed

    def process(self, claimed: ClaimedJob, *, ack_async: bool = False) -> None:
        """Run the handler of a claimed job and record its outcome (fenced).

        With ``ack_async`` (handler threads of a running pool with
        ``batch_acks``) a completion is handed to the group-commit buffer and
        this thread moves on; otherwise it is written before returning.
        """
        doc = claimed.doc
        handler = self.registry.get(doc["type"])
        if handler is None:  # unregistered between claim and run
            self._record_failure(claimed, None, FailJob(f"no handler registered for job type {doc['type']!r}"))
            return
        problems = stored_job_problems(doc)
        try:
            job: BaseJob = self.store.model._from_son(doc)
        except Exception as exc:  # noqa: BLE001 - whatever the model cannot load
            problems.append(f"cannot be loaded as {self.store.model.__name__}: {safe_str(exc)}")
        if problems:
            self._fail_malformed(doc, problems, token=claimed.token)
            return
        if exhausted(doc, handler):  # requeued by a lease rescuer that did not know the handler's bound
            bound = f"max_retries={max_retries_of(doc, handler)}"
            self._record_failure(claimed, handler, FailJob(f"{bound} of the handler exhausted before this attempt"))
            return
        with self._lock:
            state = self._inflight.get(claimed.id) or _InFlight(claimed)
        job._mjq_context = JobContext(self.store, state)
        self._log_job(logging.INFO, doc, "processing")
        self.hooks.emit("before_process", job)
        started = time.monotonic()
        outcome: str = "error"
        error: Optional[BaseException] = None
        duration: Optional[float] = None
        try:
            outcome, error, duration = self._run_handler(claimed, handler, job, state, ack_async)
        finally:
            # Paired with before_process even when recording the outcome raised
            # (the database stayed down past the retries), so spans and
            # in-progress gauges always close; "error" means nothing was recorded.
            elapsed = duration if duration is not None else time.monotonic() - started
            self.hooks.emit("after_process", job, outcome=outcome, exc=error, duration_s=elapsed)

    def _run_handler(
        self, claimed: ClaimedJob, handler: Handler, job: BaseJob, state: _InFlight, ack_async: bool
    ) -> tuple[str, Optional[BaseException], float]:
        """Call the handler and record what happened; return (outcome, exception, handler seconds)."""
        doc = claimed.doc
        started = time.monotonic()
        try:
            result = handler.fn(job)
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a handler is a failed attempt too
            duration = time.monotonic() - started
            if isinstance(exc, JobCancelled) or state.cancel_requested.is_set():
                return ("cancelled" if self._cancel(claimed) else "lease_lost"), exc, duration
            return self._record_failure(claimed, handler, exc), exc, duration
        duration = time.monotonic() - started
        result = self._storable_result(result, doc)
        if ack_async and self._submit_ack(claimed, result):
            # Buffered: "completed" is the handler's outcome; should the write
            # then find the lease gone, on_lease_lost follows.
            return "completed", None, duration
        if self.store.complete(claimed, result):
            self._log_job(logging.INFO, doc, "completed")
            return "completed", None, duration
        self._log_job(logging.WARNING, doc, "completion not recorded: the lease was lost to another worker")
        self.hooks.emit("on_lease_lost", doc)
        return "lease_lost", None, duration

    def _submit_ack(self, claimed: ClaimedJob, result: Any) -> bool:
        with self._lock:
            acker = self._acker
            if acker is None:
                return False
            self._acking[claimed.id] = claimed
        try:
            acker.submit(claimed, result)
        except RuntimeError:  # closed by stop() meanwhile: write it directly
            with self._lock:
                self._acking.pop(claimed.id, None)
            return False
        return True

    def _on_acked(self, claimed: ClaimedJob, outcome: Optional[bool]) -> None:
        if outcome:
            self._log_job(logging.INFO, claimed.doc, "completed")
        elif outcome is False:
            self._log_job(logging.WARNING, claimed.doc, "completion not recorded: the lease was lost to another worker")
            self.hooks.emit("on_lease_lost", claimed.doc)
        with self._lock:
            self._acking.pop(claimed.id, None)
            self._lock.notify_all()

    def _cancel(self, claimed: ClaimedJob) -> bool:
        """End a claimed job ``cancelled`` (fenced); False if the lease was lost."""
        if not self.store.cancel_claimed(claimed):
            return False
        self._log_job(logging.INFO, claimed.doc, "cancelled on request")
        self.hooks.emit("on_cancelled", claimed.id)
        return True

    def _storable_result(self, result: Any, doc: dict[str, Any]) -> Any:
        if result is None:
            return None
        try:
            check_value(result, what="result")
            size = len(bson.encode({"result": result}))
        except Exception as exc:  # noqa: BLE001 - whatever the encoder refuses
            reason = f"not stored: {safe_str(exc)}"
        else:
            if size <= self.config.max_result_bytes:
                return result
            reason = f"not stored: {size} bytes encoded, over max_result_bytes={self.config.max_result_bytes}"
        self._log_job(logging.WARNING, doc, "handler result %s", reason)
        return UnstorableResult(truncate(reason, self.config.max_error_chars))

    def _record_failure(self, claimed: ClaimedJob, handler: Handler | None, exc: BaseException) -> str:
        """Write a failed attempt back (retry or failed, fenced); return the outcome."""
        doc = claimed.doc
        now = self.store.now()
        attempts = int(doc["attempts"])
        record = error_record(exc, attempt=attempts, at=now, token=claimed.token, config=self.config)
        policy = handler.policy if handler is not None else None
        decision = (
            policy.decide(
                exc,
                attempts=attempts,
                max_retries=max_retries_of(doc, handler),
                enqueued_at=doc.get("created_at"),
                now=now,
                config=self.config,
            )
            if policy is not None
            else None
        )
        if decision is not None and decision.retry:
            run_at = after_ms(now, decision.delay_ms)
            written = self.store.reschedule(claimed, run_at, record)
            if not written and self._cancel(claimed):
                return "cancelled"  # a cancel was requested: no retry
            if written:
                self._log_job(
                    logging.WARNING,
                    doc,
                    "attempt failed (%s: %s); retry in %d ms",
                    record.type,
                    record.message,
                    decision.delay_ms,
                )
                self.hooks.emit("on_retry_scheduled", doc, delay_ms=decision.delay_ms, exc=exc)
                return "retry"
        else:
            written = self.store.fail(claimed, record)
            if written:
                reason = decision.reason if decision else "no handler"
                self._log_job(logging.ERROR, doc, "failed for good (%s: %s): %s", record.type, record.message, reason)
                self.hooks.emit("on_failed", doc, exc=exc)
                return "failed"
        self._log_job(logging.WARNING, doc, "failure not recorded: the lease was lost to another worker")
        self.hooks.emit("on_lease_lost", doc)
        return "lease_lost"
