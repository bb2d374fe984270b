"""Time limits: a watchdog that interrupts a handler past its limit, and gives up on one that still runs after a grace.

CPython cannot kill a thread, only ask it to stop: ``PyThreadState_SetAsyncExc``
schedules an exception in another thread, raised there the next time it
runs Python bytecode (Dramatiq's ``TimeLimit`` middleware works the same
way). So a handler past its time limit gets
:class:`~mongo_job_queue.errors.JobTimeLimitExceeded` in its own thread and
its attempt fails like any other, under the retry policy.

That request cannot reach a thread inside C code (a blocking ``time.sleep``,
a socket read without a timeout, a C extension's loop) until the call
returns, and a handler may catch it. A run that has not returned
``time_limit_grace_ms`` after its limit is therefore *abandoned*: the pool
replaces its thread (:mod:`.pool`), the fresh thread records the attempt
(:meth:`~.executor.Executor.record_abandoned`), and the abandoned thread, if
it ever returns, finds its lease gone and exits.

The exception is scheduled only while the thread is inside the handler
call, under the watch's lock, and leaving the call cancels one still
pending, so it never lands in the worker's own code.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

from ..config import QueueConfig
from ..context import RunState
from ..errors import JobTimeLimitExceeded
from ..handlers import Handler, HandlerFn
from ..middleware import MiddlewareChain
from .inflight import log_job

__all__ = ["TimeLimits", "Watch", "time_limit_of"]

log = logging.getLogger(__name__)

#: The longest single wait of the watchdog (a wait of 100 years would overflow).
_MAX_WAIT_S = 3600.0


def time_limit_of(doc: Mapping[str, Any], handler: Optional[Handler], config: QueueConfig) -> int:
    """The time limit of a run in ms (0: none): the job's own, else its handler's, else the config's default."""
    own = doc.get("time_limit_ms")
    if own is not None:
        return int(own)
    if handler is not None and handler.time_limit_ms is not None:
        return handler.time_limit_ms
    return config.default_time_limit_ms


def _schedule_exception(ident: int, exc_type: Optional[type[BaseException]]) -> int:
    """Schedule ``exc_type`` in the thread ``ident`` (None cancels one still pending); how many threads it reached."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else None  # None is passed as NULL
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exc))


class Watch:
    """One handler call under a time limit: shared by the handler's thread and the watchdog, under ``lock``."""

    def __init__(
        self, state: RunState, limit_ms: int, grace_ms: int, abandon: Optional[Callable[[Watch], None]]
    ) -> None:
        self.state = state
        self.limit_ms = limit_ms
        self.grace_ms = grace_ms
        #: Replaces the thread of an abandoned run (the pool's); None where it cannot be replaced (a caller's thread).
        self.abandon = abandon
        self.thread = threading.current_thread()
        self.lock = threading.Lock()
        self.inside = False
        #: Set by the handler's thread, as a plain store, first thing once the call is over:
        #: from then on nothing is scheduled in it and it is never abandoned.
        self.leaving = False
        self.raised = 0
        self._ident = threading.get_ident()
        self.limit_at = self.abandon_at = 0.0

    def enter(self) -> None:
        now = time.monotonic()
        self.limit_at = now + self.limit_ms / 1000
        self.abandon_at = self.limit_at + self.grace_ms / 1000
        self.inside = True

    def leave(self) -> None:
        """The handler call is over: no exception is scheduled from now on, and one still pending is cancelled."""
        with self.lock:
            self.inside = False
            if self.raised:
                _schedule_exception(self._ident, None)

    def interrupt(self) -> bool:
        """Schedule JobTimeLimitExceeded in the thread if it is still inside the call; whether it was."""
        with self.lock:
            if not self.inside or self.leaving:
                return False
            _schedule_exception(self._ident, JobTimeLimitExceeded)
            self.raised += 1
            return True

    def explain(self, exc: BaseException) -> None:
        """Give the exception the watchdog raised (which Python creates without arguments) its reason."""
        if self.raised and isinstance(exc, JobTimeLimitExceeded) and not exc.args:
            exc.args = (f"the handler ran past its time limit of {self.limit_ms} ms",)

    def abandoned_error(self) -> JobTimeLimitExceeded:
        """What an abandoned attempt is recorded with."""
        return JobTimeLimitExceeded(
            f"the handler was abandoned: still running {self.grace_ms} ms after its time limit of {self.limit_ms} ms"
        )


class TimeLimits:
    """The watchdog of one worker: a thread started by the first limited run, ending once none is left to watch."""

    #: Prefix of the watchdog thread's name; the worker sets its own.
    name = "mjq"

    def __init__(self, config: QueueConfig, hooks: MiddlewareChain, logger: Optional[logging.Logger] = None) -> None:
        self.config = config
        self.hooks = hooks
        self.log = logger or log
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def watch(self, state: RunState, limit_ms: int, abandon: Optional[Callable[[Watch], None]]) -> Optional[Watch]:
        """A watch for one run under ``limit_ms`` (None when 0: no limit); :meth:`call` starts it."""
        if limit_ms <= 0:
            return None
        return Watch(state, limit_ms, self.config.time_limit_grace_ms, abandon)

    def call(self, fn: HandlerFn, job: Any, watch: Optional[Watch]) -> Any:
        """``fn(job)``, watched: JobTimeLimitExceeded raised in it past the limit, abandoned past the grace."""
        if watch is None:
            return fn(job)
        watch.enter()
        try:
            self._add(watch, watch.limit_at)  # only from here can the watchdog raise in this thread
            return fn(job)
        finally:
            # A plain store first (no call: nothing can be raised before it), after
            # which no exception is scheduled. One scheduled just before may still
            # arrive, during the first leave(); the second cancels nothing more.
            watch.leaving = True
            try:
                watch.leave()
            except JobTimeLimitExceeded:
                watch.leave()

    def _add(self, watch: Watch, when: float) -> None:
        with self._cond:
            if len(self._due) > 64 and len(self._due) > 4 * sum(1 for _, _, w in self._due if w.inside):
                # Runs that returned in time stay queued until their deadline; drop them now and then.
                self._due = [entry for entry in self._due if entry[2].inside]
                heapq.heapify(self._due)
            heapq.heappush(self._due, (when, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.name}-timelimits", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _next(self) -> Optional[Watch]:
        """Wait for the next deadline; the watch it is due for, or None once nothing is left to watch."""
        with self._cond:
            while True:
                while self._due and not self._due[0][2].inside:
                    heapq.heappop(self._due)
                if not self._due:
                    self._thread = None
                    return None
                when, _, watch = self._due[0]
                left = when - time.monotonic()
                if left <= 0:
                    heapq.heappop(self._due)
                    return watch
                self._cond.wait(min(left, _MAX_WAIT_S))

    def _run(self) -> None:
        while (watch := self._next()) is not None:
            try:
                self._expire(watch)
            except BaseException:  # any error, a hook's included: the watchdog lives on
                self.log.exception("time limit watchdog failed on one run")

    def _expire(self, watch: Watch) -> None:
        doc = watch.state.claimed.doc
        if not watch.raised:
            if watch.interrupt():
                log_job(
                    self.log,
                    logging.WARNING,
                    doc,
                    "past its time limit of %d ms: JobTimeLimitExceeded raised in thread %s",
                    watch.limit_ms,
                    watch.thread.name,
                )
                self.hooks.emit("on_time_limit_exceeded", doc, limit_ms=watch.limit_ms)
                self._add(watch, watch.abandon_at)
            return
        if watch.abandon is None:
            if watch.inside:
                log_job(
                    self.log,
                    logging.ERROR,
                    doc,
                    "still running %d ms after its time limit; it runs in the calling thread, which cannot be "
                    "replaced, so it is not abandoned",
                    watch.grace_ms,
                )
            return
        with watch.lock:  # under the lock leave() takes: a run that has returned is never abandoned
            if not watch.inside or watch.leaving:
                return
            watch.state.abandoned.set()
            watch.state.lease_lost.set()  # no longer renewed; its progress reports raise LeaseExpired
        watch.interrupt()  # once more, for a handler that caught the first one
        # Should no thread start (at interpreter exit), the lease, no longer renewed, expires and is rescued.
        watch.abandon(watch)
