"""The poller: claims one job per free handler slot and hands it to the handler threads.

No prefetch: it never holds more claims than free handler threads, so a
crash strands at most ``concurrency`` jobs. While the queue is empty and a
change stream listens (see :mod:`.wakeup`), it does not poll: it sleeps
until the stream wakes it or the next delayed job it may claim comes due,
read from one indexed query; without a stream it backs off exponentially,
up to ``poll_interval_max_ms``. It survives any exception: the error is
logged, the jobs of a claim that were not handed to a handler go back to
the queue, and polling resumes after a backoff.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from typing import Optional

from ..config import QueueConfig
from ..handlers import HandlerRegistry
from ..middleware import MiddlewareChain
from ..model import LeaseOwner
from ..store import ClaimedJob, JobStore, PauseState
from ..store.idle import next_due
from .executor import Executor, WorkQueue
from .inflight import InflightTable, log_job
from .leases import LeaseKeeper
from .wakeup import StreamState, stream_state

__all__ = ["LISTENING_MAX_SLEEP_S", "Poller"]

log = logging.getLogger(__name__)

#: The longest an idle poller sleeps while a change stream listens, should it ever miss an event.
LISTENING_MAX_SLEEP_S = 600.0
#: How often a poller asleep by its stream checks that the stream still vouches (no I/O).
_VOUCH_CHECK_S = 0.5
#: Woken this long after a delayed job's ``run_at``, so that the claim finds it due on the same clock.
_DUE_MARGIN_S = 0.002


@dataclass(eq=False)
class Poller:
    """Claims work for one worker; ``run`` is the poller thread's body."""

    store: JobStore
    registry: HandlerRegistry
    config: QueueConfig
    hooks: MiddlewareChain
    table: InflightTable
    keeper: LeaseKeeper
    executor: Executor
    owner: LeaseOwner
    _: KW_ONLY
    log: logging.Logger = log

    def __post_init__(self) -> None:
        self._paused = PauseState()
        self._pause_read_at = -math.inf
        # Whether the stream vouches for the last pause state: set while idle and listening to it.
        self._pause_watched = False
        self._claim_failed = False
        self._claimed_at: Optional[datetime] = None  # when the last claim began, by the store's clock
        self._idle: Optional[threading.Event] = None

    @property
    def idle(self) -> bool:
        """Whether the poller last found nothing to claim (the maintenance loop paces its catch-up sweeps by it)."""
        return self._idle is not None and self._idle.is_set()

    # -- claiming -----------------------------------------------------------

    def claim_scope(self, *, chunked: bool = False) -> tuple[list[str], list[str]]:
        """The job types and queues to claim from: registered and configured, less the paused ones.

        The pause state is read at most every ``pause_refresh_ms``, not per
        claim, and only narrows the claim's ``$in`` lists, so the claim index
        serves the claim exactly as before. After an idle wait on a change
        stream that watches the pause document it is read only when the
        stream said it changed (it wakes the poller then).
        """
        stale = time.monotonic() >= self._pause_read_at + self.config.pause_refresh_ms / 1000
        if self._pause_read_at == -math.inf or (stale and not self._pause_watched):
            try:
                self._paused = self.store.control.pause_state()
                self._pause_read_at = time.monotonic()
            except Exception:  # keep the last known state; the claim reports a lasting outage
                self.log.warning("could not read the pause state; using the last one", exc_info=True)
        paused = self._paused
        types = [t for t in self.registry.types(chunked=chunked) if t not in paused.types]  # chunks: worker/chunks.py
        queues = [q for q in self.config.queues if q not in paused.queues]
        return types, queues

    def forget_pause_state(self) -> None:
        """Read the pause state again before the next claim (after a change made in this process)."""
        self._pause_read_at = -math.inf

    def claim_one(self, abort: Optional[threading.Event] = None) -> ClaimedJob | None:
        """Claim one due job of the registered types; ``abort`` cuts retry sleeps short."""
        types, queues = self.claim_scope()
        claimed = self.store.jobs.claim(types, queues, self.owner, abort=abort)
        if claimed is not None:
            self.announce([claimed])
        return claimed

    def claim_some(self, free: int, abort: Optional[threading.Event] = None) -> list[ClaimedJob]:
        """Claim up to ``free`` due jobs: one batch with ``batch_claims``, else one job."""
        types, queues = self.claim_scope()
        if self.config.batch_claims and free > 1:
            batch = self.store.jobs.claim_batch(types, queues, self.owner, free, abort=abort)
            self.announce(batch)
            return batch
        one = self.claim_one(abort=abort)
        return [one] if one is not None else []

    def announce(self, claimed: list[ClaimedJob]) -> None:
        """Emit ``after_claim`` for jobs just claimed; should anything escape, hand them all back first.

        The hooks contain their own errors, but a ``KeyboardInterrupt`` in the
        main thread passes through (see :mod:`mongo_job_queue.middleware`):
        from the moment the claim returns, no claimed job may be left holding
        this worker's lease without a run.
        """
        try:
            for job in claimed:
                self.hooks.emit("after_claim", job.doc)
        except BaseException:
            for job in claimed:
                self.executor.hand_back(job)
            raise

    # -- the thread ---------------------------------------------------------

    def run(self, work: WorkQueue, stopping: threading.Event, wake: threading.Event, idle: threading.Event) -> None:
        """Claim and dispatch until ``stopping``; an error backs off, it never ends the thread."""
        base = self.config.poll_interval_base_ms / 1000
        top = self.config.poll_interval_max_ms / 1000
        interval = base
        failures = 0
        self._idle = idle
        while not stopping.is_set():
            state = stream_state(stopping)
            if state is not None and state.pause_changed.is_set():
                state.pause_changed.clear()  # the stream saw the pause document change: read it before claiming
                self.forget_pause_state()
            try:
                found = self.step(work, stopping, wake)
            except BaseException:  # any error, SystemExit from a hook included: the thread lives on
                failures += 1
                delay = min(base * 2**failures, top)
                self.log.exception("poller step failed; backing off %.1fs", delay)
                stopping.wait(delay)
                continue
            failures = 0
            if found is None:
                continue  # no free slot, or stopping
            if found:
                idle.clear()
                self._pause_watched = False  # busy: the stream reads nothing meanwhile
                interval = base  # work appeared: snap back to the base interval
                continue
            idle.set()
            state = stream_state(stopping)
            # Only a database-wide stream hears of every change that can make a job claimable (a new
            # run_at, a resume); a stream of the jobs collection alone wakes the polling below early.
            if state is not None and state.vouches(self.store) and not self._claim_failed:
                self._sleep_listening(state, wake, base)
                continue
            self._pause_watched = False
            wake.wait(self.store.limits.wait_hint(interval, base))
            interval = min(interval * 2, top)

    def _sleep_listening(self, state: StreamState, wake: threading.Event, base: float) -> None:
        """Idle with a change stream: sleep until it wakes us or the next delayed job comes due; no poll."""
        self._pause_watched = state.watches_pause
        wait = LISTENING_MAX_SLEEP_S
        try:
            types, queues = self.claim_scope()
            now = self.store.now()
            # After the last claim's time, not now: a job that came due since the claim (its wake-up
            # spent on that claim) is read as due, and claimed at once, not slept past.
            due = next_due(self.store, types, queues, self._claimed_at or now)
            if due is not None:
                wait = min(wait, max(0.0, (due - now).total_seconds()) + _DUE_MARGIN_S)
        except Exception:  # a read that failed: the wait falls back to the poll maximum
            self.log.warning("could not read when the next delayed job is due", exc_info=True)
            wait = self.config.poll_interval_max_ms / 1000
        # In slices: an error met meanwhile by another thread of this process (a heartbeat on a cut
        # link) takes the stream's word away (StreamState.vouches), and the poller polls again.
        deadline = time.monotonic() + self.store.limits.wait_hint(wait, base)
        while not wake.wait(max(0.0, min(_VOUCH_CHECK_S, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or not state.vouches(self.store):
                break
        if not state.listening.is_set():
            self._pause_watched = False  # the stream broke meanwhile: it may have missed a change

    def step(self, work: WorkQueue, stopping: threading.Event, wake: threading.Event) -> Optional[bool]:
        """Wait for a free slot, claim and dispatch once; whether a job was found (None: no claim made)."""
        base = self.config.poll_interval_base_ms / 1000
        with self.table.cond:
            self.table.cond.wait_for(
                lambda: len(self.table) < self.config.concurrency or stopping.is_set(), timeout=base
            )
        free = self.config.concurrency - len(self.table)
        if stopping.is_set() or free <= 0:
            return None
        # Cleared before the claim, so a notify() that arrives while the
        # claim is running is not lost: the wait after it returns at once.
        wake.clear()
        try:
            self._claimed_at = self.store.now()
            claimed = self.claim_some(free, abort=stopping)
        except Exception:
            self.log.exception("claim failed")
            self._claim_failed = True  # polled again by the backoff, whatever the stream says
            return False
        self._claim_failed = False
        if claimed:
            self._dispatch_all(claimed, work, stopping)
        return bool(claimed)

    def _dispatch_all(self, claimed: list[ClaimedJob], work: WorkQueue, stopping: threading.Event) -> None:
        # Whatever happens below, no claimed job is left holding this worker's
        # lease without a run: what was not dispatched is handed back.
        todo = list(claimed)
        try:
            ready = {id(c) for c in self.keeper.confirm_slow_claims(claimed)}
            while todo:
                job = todo[0]
                if id(job) in ready:
                    self._dispatch(job, work, stopping)
                todo.pop(0)
        finally:
            for job in todo:
                self.executor.hand_back(job)

    def _dispatch(self, claimed: ClaimedJob, work: WorkQueue, stopping: threading.Event) -> None:
        # Checked under the lock that stop() sets the flag with: either the job
        # is in flight (stop() waits for it and it is queued before the exit
        # sentinels) or stop() began first and the poller hands it back here.
        with self.table.cond:
            if not stopping.is_set():
                self.table.add(claimed)
                work.put(claimed)
                log_job(self.log, logging.DEBUG, claimed.doc, "claimed")
                return
        self.executor.hand_back(claimed)
