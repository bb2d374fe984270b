"""The one handle on a queue's jobs collection: connection, clock, time bounds and retries.

Every query the queue makes goes through :class:`JobStore`, on raw pymongo
documents: the worker never touches ``Job.objects``. The handle owns what
every query needs; the queries themselves live in its components (see
:class:`JobStore`), each built with the handle and nothing else reaching
into it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pymongo
from pymongo.collection import Collection
from pymongo.database import Database
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    sleep_using_event,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from ..clock import Clock, to_naive_utc, utcnow
from ..config import QueueConfig
from ..model import BaseJob
from . import fork
from .faults import is_transient
from .finals import FinalWrites

__all__ = ["BUILD_WAIT_S", "INDEX_BUILD_MS", "MAINTENANCE_MAX_TIME_MS", "JobStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The server-side bound of each maintenance read (sweep, hygiene): a slow one gives up, the next round tries again.
MAINTENANCE_MAX_TIME_MS = 5_000
#: Extra time bound of an index build on a large existing collection, on top of ``db_timeout_ms``.
INDEX_BUILD_MS = 300_000
#: The longest a thread waits for another thread's first index build of the same collection: one try, and a margin.
BUILD_WAIT_S = INDEX_BUILD_MS / 1000 + 60

#: Set by :meth:`JobStore.tried_once` for the calls made inside its block, in that thread (context) only.
_TRIED_ONCE: contextvars.ContextVar[bool] = contextvars.ContextVar("mjq_tried_once", default=False)

#: ``hello`` round trips per clock measurement; the fastest one is used.
_CLOCK_SAMPLES = 3
#: A measurement whose fastest round trip took longer is not trusted (error up to half of it).
_MAX_CLOCK_ROUND_TRIP_S = 0.5
#: A jump of this host's wall clock against its monotonic clock that makes the offset stale (an NTP step).
_CLOCK_STEP_S = 1.0


class JobStore:
    """All MongoDB access of one queue, on the collection of the injected job model.

    The handle holds what every query needs: the job model and the config,
    the collection (reconnected in a forked child, its indexes created
    before its first use, read back as naive UTC), the server-corrected
    clock (:meth:`now`), the time bound of each call (:meth:`bounded`) and
    the transient-error retry (:meth:`retry`). The queries are in its
    components, each built with this handle:

    * :attr:`jobs` (:class:`~mongo_job_queue.store.jobs.Jobs`): insert,
      claim, lease renewal and every outcome of a claimed job;
    * :attr:`control` (:class:`~mongo_job_queue.store.control.Control`):
      pause and schedule state (the control collection), cancel requests;
    * :attr:`admin` (:class:`~mongo_job_queue.store.admin.Admin`): stats,
      purge, retry, find, malformed documents;
    * :attr:`indexes` (:class:`~mongo_job_queue.store.indexes.Indexes`):
      the model's indexes and the retention TTL indexes;
    * :attr:`workers` (:class:`~mongo_job_queue.store.workers.WorkerDocs`):
      the worker registry, one heartbeat document per running worker;
    * :attr:`dependencies` (:class:`~mongo_job_queue.store.dependencies.Dependencies`):
      blocked jobs, released by their dependencies' final writes.
    * :attr:`batches` (:class:`~mongo_job_queue.store.batches.BatchDocs`):
      batch documents, and a batch's counts read from its jobs.
    * :attr:`limits` (:class:`~mongo_job_queue.store.limiter.Limiter`):
      limit definitions and limiter documents, admitted inside the claim.
    * :attr:`keys` (:class:`~mongo_job_queue.store.key_sweep.KeySweep`): with a
      declared shard key, the sweep of key documents whose job is gone.

    Two rules hold for every write about a job:

    * Writes about a claimed job are *fenced*: filtered by ``_id``, the claim's
      ``lease_token`` and ``status == processing``. A worker that lost its lease
      (frozen, partitioned, rescued) can never overwrite the new owner's state.
    * Transient errors (failover, network) are retried a bounded number of times.
      Such an error means the write *may* have applied, so a retry that finds
      nothing to update checks whether its own earlier try did the work, using
      the lease token, before it reports a lost lease.

    Args:
        job_model: The app's concrete :class:`~mongo_job_queue.BaseJob` subclass.
        config: Validated queue settings.
        clock: Source of "now" (naive UTC).
        sleep: Sleep used between retries of a failed database call. By default
            it waits on the call's ``abort`` event, so a stopping worker is not
            held up by a retry of a claim it no longer wants.
        logger: Where the store and its components log; this module's logger by default.
    """

    def __init__(
        self,
        job_model: type[BaseJob],
        config: QueueConfig,
        *,
        clock: Clock = utcnow,
        sleep: Callable[[float], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        # The components import this module (for the handle's type), so they are imported here.
        from .admin import Admin
        from .batches import BatchDocs
        from .control import Control
        from .dependencies import Dependencies
        from .indexes import Indexes
        from .jobs import Jobs
        from .key_sweep import KeySweep
        from .limit_defs import LimitDefinitions
        from .limiter import Limiter
        from .shardkey import ShardKey
        from .workers import WorkerDocs

        self.model = job_model
        self.config = config
        self.clock = clock
        self.log = logger or log
        self._sleep = sleep
        self._pid = fork.watch(self)
        self._offset = timedelta(0)
        self._next_sync = 0.0
        self._synced = False  # no time-based decision before the first measurement
        self._sync_lock = threading.Lock()
        #: Transient errors (network, timeouts) met by :meth:`retry` in this process, ever.
        self.transient_errors = 0
        self._monotonic: Callable[[], float] = time.monotonic  # measures round trips; tests inject one
        #: Watch the wall clock for steps (only the host's own: an injected clock may jump on purpose).
        self._watch_steps = clock is utcnow
        self._last_look: tuple[float, datetime] | None = None
        #: Told of every final write (batches and dependent jobs listen); see finals.py.
        self.finals = FinalWrites(self.log)
        self.shard_key = ShardKey(job_model)  # the app's declared shard key, added to the filters about a job
        self.indexes = Indexes(self)
        #: Concurrency limits, mutex keys and rate limits, admitted inside the claim (see limiter.py).
        self.limits = Limiter(self, LimitDefinitions(self))
        self.jobs = Jobs(self, self.indexes)
        self.control = Control(self)
        self.admin = Admin(self, self.control)
        self.workers = WorkerDocs(self)
        #: Blocked jobs and their release (enqueue(depends_on=...)); listens to :attr:`finals`.
        self.dependencies = Dependencies(self)
        self.batches = BatchDocs(self)
        #: With a declared shard key: the sweep of key documents whose job is gone (see key_sweep.py).
        self.keys = KeySweep(self)

    # -- connection ---------------------------------------------------------

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        """The model's collection: reconnected in a forked child (see :mod:`.fork`), its indexes ensured first."""
        if os.getpid() != self._pid:
            self._pid = fork.forget_inherited_client(self.model)
        return self.indexes.collection()

    def sibling(self, suffix: str) -> Collection[dict[str, Any]]:
        """``<jobs collection>_<suffix>`` (control, workers, audit), read back as naive UTC like the jobs."""
        jobs = self.collection
        return jobs.database.get_collection(f"{jobs.name}_{suffix}", codec_options=jobs.codec_options)

    def _database(self) -> Database[dict[str, Any]]:
        """The model's database, reconnected in a forked child; unlike :attr:`collection` it builds no index."""
        if os.getpid() != self._pid:
            self._pid = fork.forget_inherited_client(self.model)
        db: Database[dict[str, Any]] = self.model._get_db()
        return db

    def _reach_server(self) -> None:
        """Select the server within ``db_timeout_ms``, before a step under a longer bound (an index build).

        Inside ``pymongo.timeout`` server selection waits for the whole
        remaining time, not ``serverSelectionTimeoutMS``: under the index
        build's minutes a server that is down would hold every try of the
        call that long, so a start would neither fail nor retry in time.
        A shorter ``serverSelectionTimeoutMS`` the app connected with is
        kept, as :meth:`bounded` keeps a shorter socket timeout.
        """
        bound = self.config.db_timeout_s
        try:
            bound = min(bound, self._database().client.options.server_selection_timeout)
        except Exception:  # noqa: BLE001 - no client yet: the config's bound, and the ping says why
            pass
        with self.bounded(), pymongo.timeout(bound):
            self._database().command("ping")

    def after_fork_in_child(self) -> None:
        """Called by the after-fork hook: a lock held by a parent thread at fork() stays held forever in the child."""
        self._sync_lock = threading.Lock()
        self.limits.after_fork_in_child()
        self.jobs.strays.forget()

    def ensure_indexes(self) -> None:
        """Create and check the model's indexes now, and the retention TTL indexes; idempotent (see :attr:`indexes`)."""
        self.indexes.ensure()

    # -- clock --------------------------------------------------------------

    def now(self) -> datetime:
        """The current time on the server's clock, as far as this process can tell.

        Every time the queue writes or compares (``run_at``, lease expiry) comes
        from here. With ``sync_clock`` the local clock is corrected by its
        offset from the server's, so all workers judge leases and due times
        by one clock, whatever their hosts' clocks say. Until the first
        measurement has completed every caller waits for it (and sees its
        error), so no decision is ever taken by the uncorrected clock.
        """
        if not self.config.sync_clock:
            return self.clock() + self._offset
        if not self._synced:
            with self._sync_lock:
                if not self._synced:
                    self._measure_offset()
            return self.clock() + self._offset
        # One reading of each clock serves the sync check, the step check and the answer.
        mono, wall = self._monotonic(), self.clock()
        if mono >= self._next_sync or self._wall_clock_stepped(mono, wall):
            self.sync_clock()
            wall = self.clock()  # the sync took a round trip
        return wall + self._offset

    def _wall_clock_stepped(self, mono: float, wall: datetime) -> bool:
        """Whether the wall clock jumped since the last look: the offset measured before the jump is stale.

        Syncs are minutes apart; without this an NTP step (or a date set by
        hand) would shift every lease and due time by the step until the next.
        """
        if not self._watch_steps:
            return False
        last, self._last_look = self._last_look, (mono, wall)
        if last is None:
            return False
        jump = (wall - last[1]).total_seconds() - (mono - last[0])
        return abs(jump) > _CLOCK_STEP_S

    @property
    def clock_offset(self) -> timedelta:
        """Server time minus local time, as last measured."""
        return self._offset

    def sync_clock(self) -> None:
        """Measure the offset of the local clock from the server's ``hello.localTime`` again.

        Other threads keep using the current offset meanwhile; on failure it is
        kept too, and measured again at the next interval.
        """
        if not self._sync_lock.acquire(blocking=False):
            return  # another thread is measuring
        try:
            self._measure_offset()
        except Exception as exc:  # noqa: BLE001 - keep the last offset; retry at the next interval
            self.log.debug("clock sync skipped: %r", exc)
        finally:
            self._sync_lock.release()

    def _hello(self) -> Mapping[str, Any]:
        with self.bounded():  # the clock needs no collection: no index build under a query's bound
            return self._database().command("hello")

    def _measure_offset(self) -> None:
        """Take the best of a few ``hello`` samples (shortest round trip), rejecting slow ones; caller holds the lock.

        The server reads its clock somewhere during the round trip, so the
        midpoint's error is at most half of it: the fastest sample is the
        most accurate. Raises when no sample could be taken.
        """
        self._next_sync = self._monotonic() + self.config.clock_sync_interval_ms / 1000
        samples: list[tuple[float, timedelta]] = []
        for _ in range(_CLOCK_SAMPLES):
            try:
                started = self._monotonic()
                before = self.clock()
                reply = self._hello()
                after = self.clock()
                round_trip = self._monotonic() - started
            except Exception as exc:
                if samples:
                    break  # use what was measured
                if is_transient(exc) or getattr(exc, "timeout", False):
                    raise  # the server may answer soon: measure before deciding anything
                # Refused for good (a mock without hello, no permission): it never will.
                self.log.warning("cannot measure the clock offset (%r); queue times are this host's clock", exc)
                self._synced = True
                return
            server = reply.get("localTime")
            if not isinstance(server, datetime):
                self._synced = True  # the server does not tell its time: nothing to correct by
                return
            samples.append((round_trip, to_naive_utc(server) - (before + (after - before) / 2)))
        round_trip, offset = min(samples, key=lambda sample: sample[0])
        if round_trip > _MAX_CLOCK_ROUND_TRIP_S:
            if self._synced:
                self.log.debug("clock sync skipped: fastest of %d round trips took %.3f s", len(samples), round_trip)
                return
            self.log.warning(
                "clock offset measured over a slow round trip (%.3f s): queue times may be off by up to %.3f s",
                round_trip,
                round_trip / 2,
            )
        if abs(offset - self._offset) > timedelta(seconds=1):
            self.log.warning(
                "this host's clock is %.1f s %s the database server's; correcting queue times by it",
                abs(offset.total_seconds()),
                "behind" if offset > timedelta(0) else "ahead of",
            )
        self._offset = offset
        self._synced = True

    # -- time bounds and retries --------------------------------------------

    def bounded(self, extra_ms: int = 0) -> contextlib.AbstractContextManager[None]:
        """A time bound for the database calls in a ``with`` block: ``db_timeout_ms`` (plus ``extra_ms``).

        pymongo's client-side operation timeout: it bounds server selection,
        connection checkout and the wait for a reply, and sends the remaining
        time as ``maxTimeMS``. Without it pymongo waits for a reply forever,
        so one call on a connection that a network partition silently cut
        would block a heartbeat well past its lease. Inside such a block
        pymongo ignores the client's own ``socketTimeoutMS`` and ``timeoutMS``,
        so a shorter one the app connected with is kept as the bound.
        """
        bound = self.config.db_timeout_s
        try:
            options = self._database().client.options  # no I/O: the collection would build indexes, unbounded
            for own in (options.timeout, options.pool_options.socket_timeout):
                if own:
                    bound = min(bound, own)
        except Exception:  # noqa: BLE001 - no client yet: the config's bound, and the call says why
            pass
        return pymongo.timeout(bound + extra_ms / 1000)

    @contextlib.contextmanager
    def tried_once(self) -> Iterator[None]:
        """Within the block, in this thread, every call through :meth:`retry` is tried once.

        For a reader that must answer quickly (an admin page): the retries
        ride out a failover for the worker, and count a timeout as transient,
        so a page would be held ``db_retry_attempts`` times as long on a
        query that ran out of time and would again. The other threads of the
        process (the worker's) keep their retries; so do calls outside the block.
        """
        token = _TRIED_ONCE.set(True)
        try:
            yield
        finally:
            _TRIED_ONCE.reset(token)

    def retry(self, fn: Callable[[], T], op: str, abort: threading.Event | None = None, *, extra_ms: int = 0) -> T:
        """Run ``fn`` with each try time-bounded (:meth:`bounded`); retry transient errors and timeouts.

        Every component runs its calls through this. ``fn`` must be safe to
        run again after a try whose reply was lost: each caller's ``fn``
        checks whether its earlier try applied before writing again.
        ``op`` names the call in the log; ``abort`` stops the retries early.
        Inside :meth:`tried_once` there is one try.
        """

        def bounded_try() -> T:
            try:
                return one_try()
            except Exception as exc:
                if is_transient(exc):
                    self.transient_errors += 1  # a change stream's connection may be as dead: see worker.wakeup
                raise

        def one_try() -> T:
            if extra_ms or not self.indexes.prepared:
                self._reach_server()  # a long bound is for the work, never for server selection
            if not self.indexes.prepared:
                # The first use in this process builds the indexes, which on a
                # large existing collection takes longer than any query.
                with self.bounded(INDEX_BUILD_MS):
                    self.collection  # noqa: B018 - the property prepares the collection
            with self.bounded(extra_ms):
                return fn()

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "transient database error in %s (try %d of %d), retrying: %r",
                op,
                state.attempt_number,
                self.config.db_retry_attempts,
                exc,
                extra={"db_operation": op},
            )

        # The first try runs without tenacity, whose machinery costs a good part of a
        # fast call's CPU; only a transient error builds the retrying, which replays
        # that error as its first try: the same tries, waits and log lines as before.
        first: list[Exception] = []
        try:
            return bounded_try()
        except Exception as exc:
            if not is_transient(exc):
                raise
            first.append(exc)

        def replayed_first() -> T:
            if first:
                raise first.pop()
            return bounded_try()

        abort = abort or threading.Event()
        attempts = 1 if _TRIED_ONCE.get() else self.config.db_retry_attempts
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(attempts) | stop_when_event_set(abort),
            wait=wait_exponential(multiplier=0.05, max=self.config.db_retry_max_delay_ms / 1000) + wait_random(0, 0.05),
            sleep=self._sleep or sleep_using_event(abort),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(replayed_first)
