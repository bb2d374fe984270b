"""Maintenance services: the orphan rescuer and the hygiene scan, each one step at a time.

Each service has ``run_once(now)``, a single step a test (or a caller such as
``queue.recover_orphans()``) can drive deterministically. The worker runs
them on a thread of their own, :class:`MaintenanceLoop`, apart from the
heartbeat: a slow maintenance query delays only the next maintenance step,
never a lease renewal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from ..errors import LeaseExpired, MalformedJob
from ..handlers import HandlerRegistry
from ..middleware import MiddlewareChain
from ..model import JobError
from ..retry_limit import rescue_gives_up
from ..store import JobStore
from ..store.idle import earliest_lease_expiry
from ..validation import stored_job_problems
from .inflight import log_job
from .wakeup import StreamState, stream_state

__all__ = ["Hygiene", "MaintenanceLoop", "Quarantiner", "Rescuer", "Service"]

log = logging.getLogger(__name__)

#: A paced sweep reads again this long after the expiry it waits for, so that the lease has expired on every clock.
_EXPIRY_MARGIN_S = 0.05


@dataclass(eq=False)
class Quarantiner:
    """Fails a job document damaged by hand, with the reasons, and reports it."""

    store: JobStore
    hooks: MiddlewareChain
    log: logging.Logger = log

    def fail_malformed(self, doc: dict[str, Any], problems: list[str], *, token: Optional[str] = None) -> bool:
        status = str(doc.get("status"))
        if not self.store.jobs.quarantine(doc["_id"], problems, from_status=status, token=token):
            return False
        log_job(self.log, logging.ERROR, doc, "failed: malformed job document: %s", "; ".join(problems))
        self.hooks.emit("on_failed", doc, exc=MalformedJob("; ".join(problems)))
        return True


@dataclass(eq=False)
class Rescuer:
    """Returns expired leases (crashed or frozen workers) to the queue; fails jobs out of attempts."""

    store: JobStore
    registry: HandlerRegistry
    hooks: MiddlewareChain
    quarantiner: Quarantiner
    #: Hands back an expired lease that a claim of this process took without telling (True if it did).
    take_stray: Callable[[dict[str, Any]], bool] = lambda doc: False
    log: logging.Logger = log

    def run_once(self, now: Optional[datetime] = None) -> tuple[int, int]:
        """One sweep (at most one bounded batch); ``(requeued, failed)``."""
        requeued = failed = 0
        for doc in self.store.jobs.expired_leases():
            if self.take_stray(doc):  # never ran: back to pending, no attempt counted
                requeued += 1
                continue
            problems = stored_job_problems(doc)
            if problems:  # e.g. 'errors' edited into a non-array: the rescue's $push would fail every time
                self.quarantiner.fail_malformed(doc, problems)
                failed += 1
                continue
            attempts = int(doc["attempts"])
            give_up = rescue_gives_up(doc, self.registry.get(str(doc.get("type"))))
            owner = doc.get("lease_owner") or {}
            exc = LeaseExpired(
                f"lease expired on attempt {attempts}: worker {owner.get('worker_id')} "
                f"(host {owner.get('host')}, pid {owner.get('pid')}) stopped renewing it"
            )
            at = now if now is not None else self.store.now()
            record = JobError.from_exception(
                exc, attempt=attempts, at=at, token=doc.get("lease_token"), config=self.store.config
            )
            if not self.store.jobs.recover(doc, record, give_up):
                continue  # renewed or recovered by someone else in the meantime
            if doc.get("cancel_requested"):
                failed += 1
                log_job(self.log, logging.WARNING, doc, "cancelled: lease expired after its cancellation was requested")
                self.hooks.emit("on_cancelled", doc["_id"])
                continue
            self.hooks.emit("on_orphan_recovered", doc, failed=give_up)
            if give_up:
                failed += 1
                log_job(self.log, logging.ERROR, doc, "failed: lease expired and no attempts left")
            else:
                requeued += 1
                log_job(self.log, logging.WARNING, doc, "recovered from an expired lease")
        return requeued, failed

    def paced_sweep(self, now: Optional[datetime] = None) -> Optional[float]:
        """Sweep if a lease has expired; the seconds until the next lease expires (None: no job runs, or just swept).

        One indexed read tells the earliest expiry of any running job, so an
        idle worker sleeps until then instead of sweeping by the clock. A
        lease renewed meanwhile only makes that read come early; a job
        claimed after it expires a whole lease later, after the next read.
        """
        first = earliest_lease_expiry(self.store)
        ahead = self._ahead(first)
        if ahead is None or ahead > 0:
            return ahead
        self.run_once(now)
        # The next lease may expire a moment later: wait for it, not for the next interval. One
        # already expired again means another sweep at once, while sweeps make progress (the
        # earliest expiry moves on); one stuck (e.g. recovered by nobody) waits for the interval.
        after = earliest_lease_expiry(self.store)
        ahead = self._ahead(after)
        if ahead is None or ahead > 0:
            return ahead
        return 0.0 if first is not None and after is not None and after > first else None

    def _ahead(self, expiry: Optional[datetime]) -> Optional[float]:
        """Seconds until ``expiry`` (with a margin; <= 0: expired); None for no expiry (no job runs)."""
        if expiry is None:
            return None
        ahead = (expiry - self.store.now()).total_seconds()
        return ahead + _EXPIRY_MARGIN_S if ahead > 0 else ahead


@dataclass(eq=False)
class Hygiene:
    """Fails stored jobs that no claim or sweep could handle (edited by hand into a bad shape)."""

    store: JobStore
    quarantiner: Quarantiner

    def run_once(self, now: Optional[datetime] = None) -> int:
        """One scan (the store bounds it); how many jobs were failed."""
        failed = 0
        for doc in self.store.admin.malformed_jobs():
            problems = stored_job_problems(doc)
            if problems and self.quarantiner.fail_malformed(doc, problems):
                failed += 1
        return failed


@dataclass
class Service:
    """A maintenance step and how often to run it."""

    name: str
    interval_s: float
    step: Callable[[datetime], object]
    #: The step returns the seconds until it is next due, at most its interval (None: its interval).
    paced: bool = False
    #: While the worker idles on a database-wide change stream, its interval, if longer; None: ``interval_s``.
    idle_interval_s: Optional[float] = None


class MaintenanceLoop:
    """Runs each service's step when due, on one thread, until ``stopping`` is set.

    A failing step is logged and retried at its next interval (with backoff
    while it keeps failing); it never ends the thread.
    """

    def __init__(
        self,
        services: Sequence[Service],
        now: Callable[[], datetime],
        logger: Optional[logging.Logger] = None,
        idle: Callable[[], bool] = lambda: False,
    ) -> None:
        self.services = list(services)
        self.now = now
        self.log = logger or log
        self.idle = idle

    def run(self, stopping: threading.Event) -> None:
        start = time.monotonic()
        due = [start for _ in self.services]  # at start: what a crash before this restart left
        ran = [start for _ in self.services]
        wanted = [math.inf for _ in self.services]  # what a paced step asked for
        failures = [0 for _ in self.services]
        while not stopping.is_set():
            state = stream_state(stopping)
            quiet = self._quiet(state)
            claimed = False
            if state is not None and state.short_lease_claimed.is_set():
                state.short_lease_claimed.clear()
                claimed = True
            for i, service in enumerate(self.services):
                if failures[i] == 0 and ran[i] > start:
                    due[i] = ran[i] + min(self._interval(service, quiet), wanted[i])
                    if claimed and service.paced:
                        due[i] = time.monotonic()  # a lease shorter than what it waits for began: read again
                if stopping.is_set() or time.monotonic() < due[i]:
                    continue
                try:
                    wait = service.step(self.now())
                    failures[i] = 0
                    ran[i] = time.monotonic()
                    wanted[i] = max(0.0, float(wait)) if service.paced and isinstance(wait, (int, float)) else math.inf
                    due[i] = ran[i] + min(self._interval(service, quiet), wanted[i])
                except BaseException:  # any error, SystemExit from a hook included: the thread lives on
                    failures[i] += 1
                    backoff = min(service.interval_s * 2 ** min(failures[i] - 1, 6), 600.0)
                    due[i] = time.monotonic() + max(service.interval_s, backoff)
                    self.log.exception("%s failed; next try in %.1fs", service.name, due[i] - time.monotonic())
            # Woken at least every minute, to see a change between idle and busy; and by the stream
            # when a short lease began (its waker's close() wakes it for the stop too).
            wait_s = min(60.0, max(0.0, min(due) - time.monotonic())) if due else 1.0
            (state.short_lease_claimed if state is not None else stopping).wait(wait_s)

    def _quiet(self, state: Optional[StreamState]) -> bool:
        """Idle, with a database-wide stream listening: it tells of claims of short leases."""
        return self.idle() and state is not None and state.listening.is_set() and state.watches_pause

    @staticmethod
    def _interval(service: Service, quiet: bool) -> float:
        if quiet and service.idle_interval_s is not None:
            return max(service.interval_s, service.idle_interval_s)
        return service.interval_s
