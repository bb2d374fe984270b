"""The executor: runs a claimed job's handler and records its outcome (fenced).

The handler threads of a running worker and the single-step paths
(``run_once``, eager runs, ``run_job_now``) all run a job through
:meth:`Executor.process`, under its time limit (:mod:`.timelimits`).
Completions go through a completer (:mod:`.completer`); failures, retries,
cancellations and abandoned attempts are written here.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Optional

from ..clock import after_ms
from ..config import QueueConfig
from ..context import JobContext, RunState
from ..errors import FailJob, JobCancelled, Throttled, WorkerShutdown
from ..handlers import Handler, HandlerRegistry
from ..loading import load_job
from ..middleware import MiddlewareChain, Outcome
from ..model import BaseJob, JobError, safe_str, truncate
from ..retry import RetryDecision
from ..retry_limit import max_retries_of, spent_error
from ..status import CANCELLED
from ..store import ClaimedJob, JobStore, UnstorableResult
from ..validation import check_value, stored_job_problems
from .completer import Completer, InlineCompleter
from .inflight import InflightTable, log_job, run_key
from .maintenance import Quarantiner
from .timelimits import TimeLimits, Watch, time_limit_of

__all__ = ["SHUTDOWN_GRACE_MIN_MS", "Executor", "WorkQueue"]

log = logging.getLogger(__name__)

#: The shortest delay before a job requeued at process exit is due again (see ``Executor.shutdown_grace_ms``).
SHUTDOWN_GRACE_MIN_MS = 2_000

#: Claimed jobs waiting for a handler thread; None tells a thread to exit.
WorkQueue = queue_mod.SimpleQueue[Optional[ClaimedJob]]
#: Replaces the thread of a run abandoned to its time limit (:meth:`.pool.HandlerPool.replace`).
Abandon = Callable[[Watch], None]


@dataclass(eq=False)
class Executor:
    """Runs handlers and writes outcomes for one worker."""

    store: JobStore
    registry: HandlerRegistry
    config: QueueConfig
    hooks: MiddlewareChain
    table: InflightTable
    quarantiner: Quarantiner
    #: The time-limit watchdog of this worker's runs.
    limits: TimeLimits
    _: KW_ONLY
    log: logging.Logger = log

    def __post_init__(self) -> None:
        self.inline = InlineCompleter(self.store)

    # -- handler threads ----------------------------------------------------

    def handler_loop(
        self, work: WorkQueue, stopping: threading.Event, completer: Completer, *, abandon: Optional[Abandon] = None
    ) -> None:
        """One handler thread: run queued jobs until told to exit; survives anything a job does.

        A thread whose run was abandoned to its time limit (``abandon`` put
        another in its place) exits once that run ends.
        """
        while True:
            claimed = work.get()
            if claimed is None:
                return
            state = self.table.get(run_key(claimed))
            try:
                if stopping.is_set():
                    self.hand_back(claimed)
                else:
                    self.process(claimed, completer, abandon=abandon)
            except BaseException:  # noqa: BLE001 - the pool keeps its size, whatever happens
                log_job(self.log, logging.ERROR, claimed.doc, "unexpected error in handler thread", exc_info=True)
            finally:
                self.table.remove(run_key(claimed))
            if state is not None and state.abandoned.is_set():
                log_job(self.log, logging.WARNING, claimed.doc, "abandoned run ended; its thread exits")
                return

    def hand_back(self, claimed: ClaimedJob) -> None:
        """Return a claimed job that never started to ``pending``, attempt not counted (fenced)."""
        try:
            self._hand_back(claimed)
        finally:
            self.run_over(claimed)

    def run_over(self, claimed: ClaimedJob) -> None:
        """The run is over, whatever its outcome: it leaves its limiters, and no longer holds its lease."""
        self.store.limits.release(claimed.id, claimed.token)  # see store/limiter.py
        self.store.jobs.strays.ended(claimed.id, claimed.token)  # see store/strays.py

    def _hand_back(self, claimed: ClaimedJob) -> None:
        try:
            if self.store.jobs.release(claimed):
                log_job(self.log, logging.INFO, claimed.doc, "handed back unstarted job")
            elif self.cancel(claimed):
                pass  # its cancellation had been requested: cancelled, not handed back
            else:
                log_job(self.log, logging.WARNING, claimed.doc, "could not hand back job: lease already lost")
        except Exception:  # noqa: BLE001 - lease expiry returns it if this write fails
            log_job(self.log, logging.ERROR, claimed.doc, "could not hand back job; lease expiry will", exc_info=True)

    # -- running one job ----------------------------------------------------

    def process(
        self, claimed: ClaimedJob, completer: Optional[Completer] = None, *, abandon: Optional[Abandon] = None
    ) -> None:
        """Run the handler of a claimed job and record its outcome (fenced).

        The completion goes through ``completer`` (the group-commit buffer of
        a running pool), or is written before returning by default. Only a
        pool thread, which ``abandon`` can replace, is ever abandoned to a
        time limit; the calling thread of a single step only gets the exception.
        """
        try:
            self._process(claimed, completer, abandon)
        finally:
            self.run_over(claimed)

    def load(self, claimed: ClaimedJob) -> Optional[BaseJob]:
        """The claimed job as the app's model; None for a malformed document, which is failed at once."""
        doc = claimed.doc
        problems = stored_job_problems(doc)
        try:
            job: BaseJob = load_job(self.store.model, doc)
        except Exception as exc:  # noqa: BLE001 - whatever the model cannot load
            problems.append(f"cannot be loaded as {self.store.model.__name__}: {safe_str(exc)}")
        if problems:
            self.quarantiner.fail_malformed(doc, problems, token=claimed.token)
            return None
        return job

    def _process(self, claimed: ClaimedJob, completer: Optional[Completer], abandon: Optional[Abandon]) -> None:
        doc = claimed.doc
        handler = self.registry.get(doc["type"])
        if handler is None:  # unregistered between claim and run
            self._record_failure(claimed, None, FailJob(f"no handler registered for job type {doc['type']!r}"))
            return
        job = self.load(claimed)
        if job is None:
            return
        spent = spent_error(doc, handler)  # requeued by a lease rescuer that did not know the handler's bound
        if spent is not None:
            self._record_failure(claimed, handler, spent)
            return
        state = self.table.get(run_key(claimed)) or RunState(claimed)
        job._mjq_context = JobContext(self.store, state)
        log_job(self.log, logging.INFO, doc, "processing")
        try:
            self.hooks.emit("before_process", job)
        except BaseException:  # only a main-thread KeyboardInterrupt gets through: the run never started
            self.hand_back(claimed)
            raise
        started = time.monotonic()
        outcome: Outcome = "error"
        error: Optional[BaseException] = None
        duration: Optional[float] = None
        try:
            outcome, error, duration = self._run_handler(
                claimed, handler, job, state, completer or self.inline, abandon
            )
        finally:
            # Paired with before_process even when recording the outcome raised
            # (the database stayed down past the retries), so spans and
            # in-progress gauges always close; "error" means nothing was recorded.
            elapsed = duration if duration is not None else time.monotonic() - started
            self.hooks.emit("after_process", job, outcome=outcome, exc=error, duration_s=elapsed)

    def _run_handler(
        self,
        claimed: ClaimedJob,
        handler: Handler,
        job: BaseJob,
        state: RunState,
        completer: Completer,
        abandon: Optional[Abandon],
    ) -> tuple[Outcome, Optional[BaseException], float]:
        """Call the handler and record what happened; return (outcome, exception, handler seconds).

        An abandoned run's late end takes the same paths: its writes lose to
        the fence (the abandonment removed its token) and are reported lost.
        """
        doc = claimed.doc
        watch = self.limits.watch(state, time_limit_of(doc, handler, self.config), abandon)
        started = time.monotonic()
        try:
            result = self.limits.call(handler.fn, job, watch)
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a handler is a failed attempt too
            duration = time.monotonic() - started
            if watch is not None:
                watch.explain(exc)
            if isinstance(exc, JobCancelled) or state.cancel_requested.is_set():
                return ("cancelled" if self.cancel(claimed) else "lease_lost"), exc, duration
            if isinstance(exc, Throttled) and not state.abandoned.is_set():
                return self._throttled(claimed, exc), exc, duration
            return self._record_failure(claimed, handler, exc), exc, duration
        duration = time.monotonic() - started
        if watch is not None and watch.raised and not state.abandoned.is_set():
            log_job(self.log, logging.WARNING, doc, "handler caught JobTimeLimitExceeded and returned: it completes")
        if state.abandoned.is_set():
            # Its write must lose to the fence; buffered, its pending ack would give the
            # heartbeat this dead run's token in place of the live retry's until it landed.
            completer = self.inline
        written = completer.complete(claimed, self.storable_result(result, doc))
        if written is None:
            # Buffered: "completed" is the handler's outcome; should the write
            # then find the lease gone, on_lease_lost follows.
            return "completed", None, duration
        self.report_completion(claimed, written)
        return ("completed" if written else "lease_lost"), None, duration

    def _throttled(self, claimed: ClaimedJob, exc: Throttled) -> Outcome:
        """Put the job back to ``pending`` after ``retry_after_ms``, no attempt used (fenced)."""
        if self.store.jobs.throttle(claimed, after_ms(self.store.now(), exc.retry_after_ms)):
            log_job(self.log, logging.INFO, claimed.doc, "throttled; runs again in %d ms", exc.retry_after_ms)
            return "retry"
        if self.cancel(claimed):
            return "cancelled"
        log_job(self.log, logging.WARNING, claimed.doc, "throttle not recorded: the lease was lost to another worker")
        self.hooks.emit("on_lease_lost", claimed.doc)
        return "lease_lost"

    def report_completion(self, claimed: ClaimedJob, written: Optional[bool]) -> None:
        """Log a completion write's outcome: True recorded, False lease lost, None write failed."""
        if written:
            log_job(self.log, logging.INFO, claimed.doc, "completed")
        elif written is False:
            log_job(
                self.log, logging.WARNING, claimed.doc, "completion not recorded: the lease was lost to another worker"
            )
            self.hooks.emit("on_lease_lost", claimed.doc)

    def cancel(self, claimed: ClaimedJob) -> bool:
        """End a claimed job ``cancelled`` (fenced); False if the lease was lost."""
        if not self.store.jobs.cancel_claimed(claimed):
            return False
        log_job(self.log, logging.INFO, claimed.doc, "cancelled on request")
        self.hooks.emit("on_cancelled", claimed.id)
        return True

    def storable_result(self, result: Any, doc: dict[str, Any]) -> Any:
        """``result`` as its completion stores it: itself, or an :class:`UnstorableResult` with the reason."""
        if result is None:
            return None
        try:
            size = check_value(result, what="result")
        except Exception as exc:  # noqa: BLE001 - whatever the encoder refuses
            reason = f"not stored: {safe_str(exc)}"
        else:
            if size <= self.config.max_result_bytes:
                return result
            reason = f"not stored: {size} bytes encoded, over max_result_bytes={self.config.max_result_bytes}"
        log_job(self.log, logging.WARNING, doc, "handler result %s", reason)
        return UnstorableResult(truncate(reason, self.config.max_error_chars))

    def _record_failure(
        self, claimed: ClaimedJob, handler: Handler | None, exc: BaseException, *, abandoned: bool = False
    ) -> Outcome:
        """Write a failed attempt back (retry or failed, fenced); return the outcome.

        Both writes are fenced on the cancel request as well: a job whose
        cancellation was requested ends ``cancelled``, whatever attempt this
        was. An ``abandoned`` attempt's write also removes the lease token
        (see :meth:`record_abandoned`).
        """
        doc = claimed.doc
        now = self.store.now()
        record = JobError.from_exception(
            exc, attempt=int(doc["attempts"]), at=now, token=claimed.token, config=self.config
        )
        decision = self._decide(doc, handler, exc, now)
        retry_at = after_ms(now, decision.delay_ms) if decision is not None and decision.retry else None
        if abandoned:
            status = self.store.jobs.abandon(claimed, record, retry_at)
            if status == CANCELLED:
                log_job(self.log, logging.INFO, doc, "cancelled on request")
                self.hooks.emit("on_cancelled", claimed.id)
                return "cancelled"
            written = status is not None
        elif retry_at is not None:
            written = self.store.jobs.reschedule(claimed, retry_at, record)
        else:
            written = self.store.jobs.fail(claimed, record)
        if written and decision is not None and retry_at is not None:
            log_job(
                self.log,
                logging.WARNING,
                doc,
                "attempt failed (%s: %s); retry in %d ms",
                record.type,
                record.message,
                decision.delay_ms,
            )
            self.hooks.emit("on_retry_scheduled", doc, delay_ms=decision.delay_ms, exc=exc)
            return "retry"
        if written:
            reason = decision.reason if decision else "no handler"
            log_job(self.log, logging.ERROR, doc, "failed for good (%s: %s): %s", record.type, record.message, reason)
            self.hooks.emit("on_failed", doc, exc=exc)
            return "failed"
        if not abandoned and self.cancel(claimed):
            return "cancelled"  # a cancel was requested: it ends cancelled, not retried or failed
        log_job(self.log, logging.WARNING, doc, "failure not recorded: the lease was lost to another worker")
        self.hooks.emit("on_lease_lost", doc)
        return "lease_lost"

    def _decide(
        self, doc: dict[str, Any], handler: Handler | None, exc: BaseException, now: Any
    ) -> Optional[RetryDecision]:
        """The retry policy's decision on a failed attempt; None without a handler (it fails)."""
        if handler is None:
            return None
        return handler.policy.decide(
            exc,
            attempts=int(doc["attempts"]),
            max_retries=max_retries_of(doc, handler),
            enqueued_at=doc.get("created_at"),
            now=now,
            config=self.config,
        )

    def record_abandoned(self, watch: Watch) -> None:
        """Record the attempt of a run abandoned to its time limit; the thread that replaces it runs this first.

        The attempt fails with :class:`~mongo_job_queue.errors.JobTimeLimitExceeded`
        and the retry policy decides between a retry and ``failed`` (a
        requested cancel ends it ``cancelled``). The write removes the lease
        token, as a rescue does, so whatever the abandoned handler writes
        later matches nothing. The handler may still be running when the job
        is retried: at least once, never exactly once. Its limiter slots are
        kept until it returns (:meth:`.store.limiter.Limiter.keep`), so no
        other run of its mutex key, nor its own retry, starts beside it.
        """
        claimed = watch.state.claimed
        doc = claimed.doc
        self.store.limits.keep(claimed.id, claimed.token)  # released by process() once the handler returns
        exc = watch.abandoned_error()
        thread = watch.thread.name
        log_job(self.log, logging.ERROR, doc, "%s; thread %s replaced, its late outcome is fenced out", exc, thread)
        self.hooks.emit("on_abandoned", doc, limit_ms=watch.limit_ms)
        try:
            self._record_failure(claimed, self.registry.get(doc["type"]), exc, abandoned=True)
        except Exception:  # noqa: BLE001 - its lease is no longer renewed: lease expiry recovers the job
            log_job(self.log, logging.ERROR, doc, "could not record the abandoned attempt", exc_info=True)
        finally:
            self.table.remove(run_key(claimed))

    def shutdown_grace_ms(self) -> int:
        """How long a shutdown requeue keeps a job from being due: longer than a dying process can still run it.

        The requeue is written by an exit hook, and the handler thread (a
        daemon) keeps running through the remaining exit hooks and the
        interpreter's finalisation. Making the job due only after this grace
        means no other worker starts it while this process can still run it;
        it never exceeds the lease, which would have recovered the job anyway.
        """
        return min(self.config.lease_ms, max(SHUTDOWN_GRACE_MIN_MS, self.config.heartbeat_interval_ms))

    def requeue_on_shutdown(self, state: RunState, worker_id: str) -> None:
        """Return a run abandoned by a stopping process to the queue, attempt counted (fenced).

        The job is due again after :meth:`shutdown_grace_ms`, not at once
        (``failed`` if no attempt is left, ``cancelled`` if requested), and
        its limiter holders lapse at that time too, not at once. The
        write removes the lease token, as a rescue does: the handler (single
        or chunk) may still return here, and its late outcome must match
        nothing and fail the "was it my earlier try?" check.
        """
        claimed = state.claimed
        doc = claimed.doc
        state.lease_lost.set()  # given up on purpose: stop renewing it
        attempts = int(doc["attempts"])
        exc = WorkerShutdown(f"worker {worker_id} shut down during attempt {attempts}")
        now = self.store.now()
        try:  # its slots lapse when the job is due again, not at once: the handler may still run until then
            self.store.limits.lapse(claimed.id, claimed.token, after_ms(now, self.shutdown_grace_ms()))
        except Exception:  # noqa: BLE001 - not extended any more, they lapse a lease later
            log_job(self.log, logging.WARNING, doc, "could not shorten its limiter holders", exc_info=True)
        record = JobError.from_exception(exc, attempt=attempts, at=now, token=claimed.token, config=self.config)
        give_up = attempts >= max_retries_of(doc, self.registry.get(doc["type"])) + 1
        try:
            written = self.store.jobs.abandon(
                claimed, record, None if give_up else after_ms(now, self.shutdown_grace_ms())
            )
        except Exception:  # noqa: BLE001 - lease expiry recovers it if this write fails
            log_job(self.log, logging.ERROR, doc, "could not return to the queue on shutdown", exc_info=True)
            return
        if written == CANCELLED:
            log_job(self.log, logging.INFO, doc, "cancelled on request")
            self.hooks.emit("on_cancelled", claimed.id)
        elif written:
            log_job(self.log, logging.WARNING, doc, "returned to the queue on shutdown (attempt counted)")
