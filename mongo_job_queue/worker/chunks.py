"""Chunk runners: one thread per batch handler that claims a chunk of jobs, calls ``fn(jobs)`` and writes each outcome.

The chunk is formed by the claim, never by buffering jobs in memory: while
fewer than ``max_size`` jobs are due the runner counts them (no claim) for
at most ``max_wait_ms`` from when it first saw one, then claims up to
``max_size`` of them with one batched claim (``store.jobs.claim_batch``;
with a ``key``, all of the most urgent due job's key value). Each job of the
chunk is its own run in the in-flight table, so the one heartbeat renews
every lease of the chunk in its single bulk write, a cancel request reaches
its own job, and a crash leaves each job to lease expiry with its own
attempt counted. Every outcome is written in one bulk write, each fenced by
its own job's lease token (``store.jobs.write_many``).

The handler's time limit (its own, else ``default_time_limit_ms``; a job's
``time_limit_ms`` does not apply) bounds the whole call. A chunk still
running ``time_limit_grace_ms`` after it is abandoned: its leases are no
longer renewed, so lease expiry returns each job (an attempt counted), a new
thread takes the runner's place, and the old one writes nothing if it ever
returns. Its jobs' limiter slots are kept (the heartbeat extends them) until
it does return, as a single abandoned handler's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any, Optional

from ..chunks import JobOutcome, resolve
from ..clock import after_ms
from ..config import QueueConfig
from ..context import JobContext, RunState
from ..errors import JobCancelled, LeaseExpired
from ..handlers import ChunkSpec, Handler, HandlerRegistry
from ..middleware import MiddlewareChain, Outcome
from ..model import BaseJob, JobError, LeaseOwner
from ..retry_limit import max_retries_of, spent_error
from ..status import CANCELLED, COMPLETED, FAILED, PENDING
from ..store import ClaimedJob, JobStore
from ..store.outcomes import FencedWrite, completion_update
from .executor import Executor
from .inflight import InflightTable, log_job, run_key
from .leases import LeaseKeeper
from .poller import Poller
from .timelimits import Watch, time_limit_of

__all__ = ["ChunkRunner", "chunk_runners"]

log = logging.getLogger(__name__)

#: Shortest pause between two counts while a chunk fills.
_FILL_CHECK_MIN_S = 0.05
_OUTCOME_OF = {COMPLETED: "completed", PENDING: "retry", FAILED: "failed", CANCELLED: "cancelled"}


@dataclass
class _Run:
    """One job of a running chunk: its run state, the app's instance, and what the chunk decided for it."""

    state: RunState
    job: BaseJob
    write: Optional[FencedWrite] = None
    exc: Optional[BaseException] = None
    delay_ms: int = 0
    outcome: Outcome = "error"
    #: For a completion: the result as stored (a refused bulk write writes it again alone, see ``_write_all``).
    result: Any = None

    @property
    def claimed(self) -> ClaimedJob:
        return self.state.claimed


@dataclass(eq=False)
class ChunkRunner:
    """Claims and runs the chunks of one batch handler; ``run`` is its thread's body."""

    handler: Handler
    store: JobStore
    config: QueueConfig
    hooks: MiddlewareChain
    table: InflightTable
    keeper: LeaseKeeper
    poller: Poller
    executor: Executor
    owner: LeaseOwner
    _: KW_ONLY
    log: logging.Logger = log
    #: Told of a thread that replaced an abandoned one (the worker's stop waits for the new one).
    on_replace: Callable[[threading.Thread, threading.Thread], None] = field(default=lambda old, new: None)

    def __post_init__(self) -> None:
        self._stopping = threading.Event()

    @property
    def spec(self) -> ChunkSpec:
        assert self.handler.chunk is not None
        return self.handler.chunk

    def new_thread(self, stopping: threading.Event, name: str) -> threading.Thread:
        """The runner's thread (not started), ``<name>-chunks-<job type>``."""
        return threading.Thread(
            target=self.run, args=(stopping,), name=f"{name}-chunks-{self.handler.job_type}", daemon=True
        )

    # -- the thread ---------------------------------------------------------

    def run(self, stopping: threading.Event) -> None:
        """Claim and run chunks until ``stopping``; an error backs off, it never ends the thread."""
        self._stopping = stopping  # for a thread that replaces this one (see _abandon)
        base = self.config.poll_interval_base_ms / 1000
        # Idle, it still looks every max_wait_ms (or base interval, if longer): no wake-up reaches it, and
        # a due job must not wait the poller's longest backoff on top of its chunk's max_wait_ms.
        config = self.config
        top = min(config.poll_interval_max_ms, max(config.poll_interval_base_ms, self.spec.max_wait_ms)) / 1000
        interval, failures = base, 0
        while not stopping.is_set():
            try:
                ran = self.step(stopping)
            except BaseException:  # the thread lives on, as the poller's
                failures += 1
                self.log.exception("chunk step of %s failed; backing off", self.handler.job_type)
                stopping.wait(min(base * 2**failures, top))
                continue
            failures = 0
            if ran is None:
                return  # this thread's chunk was abandoned: its replacement runs on
            if ran:
                interval = base
                continue
            stopping.wait(interval)
            interval = min(interval * 2, top)

    def step(self, stopping: threading.Event) -> Optional[bool]:
        """Wait for a chunk to fill (at most ``max_wait_ms``), claim and run it; whether one ran (None: abandoned)."""
        spec = self.spec
        types, queues = self._scope()
        count, where = self.store.jobs.peek_due(types, queues, spec.max_size, key=spec.key)
        if not count:
            return False
        deadline = time.monotonic() + spec.max_wait_ms / 1000
        while count < spec.max_size:
            left = deadline - time.monotonic()
            if left <= 0 or stopping.wait(min(left, max(_FILL_CHECK_MIN_S, self.config.poll_interval_base_ms / 1000))):
                break
            count, where = self.store.jobs.peek_due(types, queues, spec.max_size, key=spec.key)
            if not count:
                return False
        if stopping.is_set():
            return False
        types, queues = self._scope()  # again: a pause made while the chunk filled applies to its claim
        claimed = self.store.jobs.claim_batch(types, queues, self.owner, spec.max_size, abort=stopping, where=where)
        if not claimed:
            return False
        self.poller.announce(claimed)
        claimed = self.keeper.confirm_slow_claims(claimed)
        with self.table.cond:  # as the poller's dispatch: either in flight (stop waits) or handed back
            states = None if stopping.is_set() else [self.table.add(c, holds_slot=False) for c in claimed]
        if states is None:
            for c in claimed:
                self.executor.hand_back(c)
            return True
        try:
            return self.run_chunk(states)
        finally:
            for state in states:  # each run is over, whatever its outcome
                self.table.remove(run_key(state.claimed))
                self.executor.run_over(state.claimed)

    def _scope(self) -> tuple[list[str], list[str]]:
        types, queues = self.poller.claim_scope(chunked=True)
        return [t for t in types if t == self.handler.job_type], queues

    # -- one chunk ----------------------------------------------------------

    def run_chunk(self, states: list[RunState]) -> Optional[bool]:
        """Call the handler on the chunk's jobs and write every outcome; True (None if the chunk was abandoned)."""
        runs = self._loadable(states)
        if not runs:
            return True
        jobs = [r.job for r in runs]
        self.hooks.emit("before_chunk", jobs)
        for r in runs:
            log_job(self.log, logging.INFO, r.claimed.doc, "processing in a chunk of %d", len(runs))
            self.hooks.emit("before_process", r.job)
        watch = self.executor.limits.watch(runs[0].state, time_limit_of({}, self.handler, self.config), self._abandon)
        started = time.monotonic()
        error: Optional[BaseException] = None
        outcomes: dict[Any, JobOutcome] = {}
        try:
            outcomes = resolve(self.executor.limits.call(self.spec.fn, jobs, watch), [r.claimed.id for r in runs])
        except BaseException as exc:  # noqa: BLE001 - any exception retries the chunk, as a single job's
            error = exc
            if watch is not None:
                watch.explain(exc)
        duration = time.monotonic() - started
        if runs[0].state.abandoned.is_set():
            log_job(self.log, logging.WARNING, runs[0].claimed.doc, "abandoned chunk returned; writing nothing")
            for r in runs:
                self.hooks.emit("after_process", r.job, outcome="lease_lost", exc=error, duration_s=duration)
            self.hooks.emit("after_chunk", jobs, outcomes=["lease_lost"] * len(runs), exc=error, duration_s=duration)
            return None
        try:
            self._decide_all(runs, outcomes, error)
            self._write_all(runs)
        finally:
            for r in runs:
                self.hooks.emit("after_process", r.job, outcome=r.outcome, exc=r.exc, duration_s=duration)
            self.hooks.emit("after_chunk", jobs, outcomes=[r.outcome for r in runs], exc=error, duration_s=duration)
        return True

    def _loadable(self, states: list[RunState]) -> list[_Run]:
        """The runs whose document loads as the app's model and has attempts left; the others are failed at once."""
        runs, spent = [], []
        for state in states:
            job = self.executor.load(state.claimed)
            if job is None:
                continue
            job._mjq_context = JobContext(self.store, state, in_chunk=True)
            run = _Run(state, job)
            # Requeued by a rescuer that did not know the handler's bound:
            error = spent_error(state.claimed.doc, self.handler)
            if error is not None:
                run.exc = error
                run.write = self.store.jobs.failure(state.claimed, self._record(run, error, self.store.now()))
                spent.append(run)
            else:
                runs.append(run)
        if spent:
            self._write_all(spent)
        return runs

    def _decide_all(self, runs: list[_Run], outcomes: dict[Any, JobOutcome], error: Optional[BaseException]) -> None:
        """Each run's write: its own outcome, or the chunk's exception under its own attempts and retry policy."""
        now = self.store.now()
        jobs = self.store.jobs
        for run in runs:
            claimed = run.claimed
            outcome = outcomes.get(claimed.id)
            stopped = run.state.stopped  # what its progress report would have raised, as a single handler's
            if isinstance(stopped, LeaseExpired):  # its lease is gone: nothing to write, as for a stale chunk
                run.exc, run.outcome = stopped, "lease_lost"
                log_job(self.log, logging.WARNING, claimed.doc, "outcome not recorded: the lease was lost")
                self.hooks.emit("on_lease_lost", claimed.doc)
                continue
            done = outcome is not None and outcome.kind == "done"
            # A job the handler completed completes, as a single handler's that returns: the work was done.
            # One it retried or failed, with a cancel requested, ends cancelled, as a single handler's that raises.
            cancelled = run.state.cancel_requested.is_set() and not done
            if isinstance(stopped, JobCancelled) or cancelled or (outcome is not None and outcome.kind == "cancel"):
                run.write = jobs.cancellation(claimed)
                run.exc = stopped or error
                continue
            if done:
                assert outcome is not None
                run.result = self.executor.storable_result(outcome.result, claimed.doc)
                run.write = FencedWrite(claimed, COMPLETED, completion_update(now, run.result, claimed.progress))
                continue
            exc = error if outcome is None else outcome.exception()
            assert exc is not None
            run.exc = exc
            record = self._record(run, exc, now)
            retry_at = None
            if outcome is None or outcome.kind == "retry":
                decision = self.handler.policy.decide(
                    exc,
                    attempts=int(claimed.doc["attempts"]),
                    max_retries=max_retries_of(claimed.doc, self.handler),
                    enqueued_at=claimed.doc.get("created_at"),
                    now=now,
                    config=self.config,
                )
                if decision.retry:
                    run.delay_ms = decision.delay_ms
                    retry_at = after_ms(now, decision.delay_ms)
            run.write = (
                jobs.failure(claimed, record) if retry_at is None else jobs.rescheduling(claimed, retry_at, record)
            )

    def _record(self, run: _Run, exc: BaseException, now: datetime) -> JobError:
        claimed = run.claimed
        return JobError.from_exception(
            exc, attempt=int(claimed.doc["attempts"]), at=now, token=claimed.token, config=self.config
        )

    def _write_all(self, runs: list[_Run]) -> None:
        """One bulk write of every run's outcome, each fenced by its own token; then each run's log and hooks."""
        writes = [r.write for r in runs if r.write is not None]
        landed = self.store.jobs.write_many(writes, "chunk_outcomes")
        for run in runs:
            write, doc = run.write, run.claimed.doc
            if write is None:
                continue
            written: Optional[bool] = run_key(run.claimed) in landed
            if not written and write.status == COMPLETED:  # written alone: a lost lease, or refused as too large
                written = self._complete_alone(run)
                if written is None:
                    continue  # not written at all ("error"): lease expiry runs it again
            if not written:
                # An uncancelled write that did not land may have met a cancel request: it ends cancelled.
                if write.uncancelled and self.executor.cancel(run.claimed):
                    run.outcome = "cancelled"
                    continue
                run.outcome = "lease_lost"
                log_job(self.log, logging.WARNING, doc, "outcome not recorded: the lease was lost to another worker")
                self.hooks.emit("on_lease_lost", doc)
                continue
            run.outcome = _OUTCOME_OF[write.status]  # type: ignore[assignment]
            if write.status == PENDING:
                log_job(self.log, logging.WARNING, doc, "attempt failed in its chunk; retry in %d ms", run.delay_ms)
                self.hooks.emit("on_retry_scheduled", doc, delay_ms=run.delay_ms, exc=run.exc)
            elif write.status == FAILED:
                log_job(self.log, logging.ERROR, doc, "failed for good in its chunk: %r", run.exc)
                self.hooks.emit("on_failed", doc, exc=run.exc)
            elif write.status == CANCELLED:
                log_job(self.log, logging.INFO, doc, "cancelled")
                self.hooks.emit("on_cancelled", run.claimed.id)
            else:
                log_job(self.log, logging.INFO, doc, "completed")

    def _complete_alone(self, run: _Run) -> Optional[bool]:
        """A completion the bulk write did not land, written alone: False if its lease is lost, None on an error.

        The single write tells a lost lease from a write the server refused,
        and completes a job whose result would push its document past
        16 MiB without the result (``result_error``), as a single handler's.
        """
        try:
            return self.store.jobs.complete(run.claimed, run.result)
        except Exception:  # noqa: BLE001 - its lease expires and the job runs again
            log_job(self.log, logging.ERROR, run.claimed.doc, "could not record the completion", exc_info=True)
            return None

    def _abandon(self, watch: Watch) -> None:
        """The chunk ran past its time limit and grace: stop renewing its leases, and let a new thread run on."""
        first = watch.state
        for state in self.table.running():
            if state.claimed.token == first.claimed.token:  # one claim, one token: the runs of this chunk
                state.abandoned.set()
                state.lease_lost.set()
                self.store.limits.keep(state.claimed.id, state.claimed.token)  # until step() returns
                self.table.remove(run_key(state.claimed))
        log_job(
            self.log,
            logging.ERROR,
            first.claimed.doc,
            "chunk abandoned past its time limit of %d ms; lease expiry returns its jobs, its limiter slots are kept",
            watch.limit_ms,
        )
        self.hooks.emit("on_abandoned", first.claimed.doc, limit_ms=watch.limit_ms)
        old = watch.thread
        new = threading.Thread(target=self.run, args=(self._stopping,), name=f"{old.name}~", daemon=True)
        new.start()
        self.on_replace(old, new)


def chunk_runners(
    registry: HandlerRegistry,
    poller: Poller,
    on_replace: Callable[[threading.Thread, threading.Thread], None],
    logger: Optional[logging.Logger] = None,
) -> list[ChunkRunner]:
    """One runner per batch handler registered now, over the poller's collaborators (built at each start)."""
    runners = []
    for job_type in registry.types(chunked=True):
        handler = registry.get(job_type)
        if handler is None:
            continue
        runners.append(
            ChunkRunner(
                handler,
                poller.store,
                poller.config,
                poller.hooks,
                poller.table,
                poller.keeper,
                poller,
                poller.executor,
                poller.owner,
                log=logger or log,
                on_replace=on_replace,
            )
        )
    return runners
