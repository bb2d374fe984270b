"""The heartbeat: one thread that renews the leases of this worker's runs, and nothing else.

It never waits on maintenance (the orphan sweep and the hygiene scan run on
their own thread, see :mod:`.maintenance`), so a slow maintenance query
cannot let a live lease expire. It is one per worker for the worker's whole
life, not one per start: a run still going after a timed-out ``stop()`` keeps
its heartbeat, and a restart reuses the thread instead of adding a second.
A handler abandoned to its time limit keeps its limiter slots while it runs
(:meth:`.store.limiter.Limiter.keep`): the heartbeat goes on extending them,
with no lease left to renew and after a ``stop()`` too, until it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import KW_ONLY, dataclass
from datetime import timedelta
from typing import Any, Optional

from ..clock import after_ms
from ..config import QueueConfig
from ..middleware import MiddlewareChain
from ..store import ClaimedJob, JobStore
from .inflight import InflightTable, log_job

__all__ = ["LeaseKeeper"]

log = logging.getLogger(__name__)

#: Longest pause after a failed heartbeat before the next one (it keeps the regular interval if shorter).
_MAX_FAILURE_BACKOFF_S = 5.0


@dataclass(eq=False)
class LeaseKeeper:
    """Renews leases of the runs in ``table``; reports lost leases and cancel requests to their runs."""

    store: JobStore
    table: InflightTable
    config: QueueConfig
    hooks: MiddlewareChain
    _: KW_ONLY
    log: logging.Logger = log
    #: The thread's name is ``<name>-leases``.
    name: str = "mjq"

    def __post_init__(self) -> None:
        self._wanted = False
        self._thread: Optional[threading.Thread] = None

    def _notify(self) -> None:
        """Wake the thread wherever it waits (the caller holds the table's lock): a start, a release, a new config.

        The table's ``beat`` condition, not ``cond``: the runs coming and going do not wake it. It lives on
        the table, so a forked child's fresh table lock comes with a fresh one.
        """
        self.table.beat.notify_all()
        self.table.emptied.notify_all()

    # -- the thread ---------------------------------------------------------

    def start(self) -> None:
        """Keep beating (start the thread, or keep the one still renewing an earlier start's runs)."""
        with self.table.cond:
            self._wanted = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"{self.name}-leases", daemon=True)
                self._thread.start()
            self._notify()

    def release(self) -> None:
        """Let the thread end once no run is left to renew."""
        with self.table.cond:
            self._wanted = False
            self._notify()

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def forget(self) -> None:
        """In a forked child: the parent's thread does not exist here."""
        self._thread = None
        self._wanted = False

    def _done(self) -> bool:
        return not self._wanted and not self.table.busy() and not self.store.limits.keeping()

    def waited_for(self) -> Optional[threading.Thread]:
        """The thread, for a ``stop()`` to wait for; None while it beats only for abandoned runs' slots.

        A stop never waits for an abandoned handler, so neither for the beat
        that keeps its slots: that beat ends when the handler returns.
        """
        with self.table.cond:
            if not self._wanted and not self.table.busy() and self.store.limits.keeping():
                return None
            return self._thread

    def set_config(self, config: QueueConfig) -> None:
        """Beat at the new config's interval from now on (it also sets the lease each renewal grants)."""
        with self.table.cond:
            self.config = config
            self._notify()  # a beat due sooner under the new interval is not slept through

    def _interval(self) -> float:
        return self.config.heartbeat_interval_ms / 1000

    def _run(self) -> None:
        # The interval is read afresh for every wait, never kept: the thread
        # outlives starts and configure_worker(), and the store grants each
        # renewal the lease of the current config, so beating at an old,
        # longer interval would let the new, shorter leases lapse.
        failures = 0
        while True:
            with self.table.cond:
                if self._done():
                    self._thread = None
                    return
            beat = time.monotonic()
            try:
                self.renew_leases()
                failures = 0
            except BaseException:  # any error, SystemExit from a hook included: the thread lives on
                failures += 1
                self.log.exception("lease renewal failed; retrying in %.1fs", self._delay(failures))
            with self.table.cond:
                while not self._done():
                    left = beat + self._delay(failures) - time.monotonic()
                    if left <= 0:
                        break
                    # Released, it waits for the table to empty; wanted, only for its next beat.
                    (self.table.emptied if not self._wanted else self.table.beat).wait(left)

    def _delay(self, failures: int) -> float:
        """Seconds from one beat to the next: the interval, shorter while renewals fail."""
        interval = self._interval()
        return min(interval, 0.1 * 2**failures, _MAX_FAILURE_BACKOFF_S) if failures else interval

    # -- one beat -----------------------------------------------------------

    def renew_leases(self) -> None:
        """Extend the leases of this worker's runs; flag the ones that were lost or asked to cancel."""
        claims = self.table.claims()
        leases = {job_id: claimed.token for job_id, claimed in claims.items()}
        if not leases:
            if self.store.limits.keeping():  # no lease to renew, but an abandoned handler still holds slots
                self.store.limits.extend({}, after_ms(self.store.now(), self.store.config.lease_ms))
            return
        taken: list[tuple[Any, dict[str, Any]]] = []
        progress: dict[Any, dict[str, Any]] = {}
        for state in self.table.running():
            if leases.get(state.claimed.id) == state.claimed.token and (p := state.take_progress()) is not None:
                progress[state.claimed.id] = p
                taken.append((state, p))
        try:
            beat = self.store.jobs.heartbeat(leases, progress, claims)
        except BaseException:
            for state, p in taken:  # written by the next beat instead
                state.restore_progress(p)
            raise
        for job_id in beat.cancel_requested:
            entry = self.table.get((job_id, leases[job_id]))
            if entry is not None and not entry.cancel_requested.is_set():
                entry.cancel_requested.set()
                log_job(self.log, logging.INFO, entry.claimed.doc, "cancellation requested; telling the handler")
        for job_id in beat.lost:
            entry = self.table.get((job_id, leases[job_id]))
            if entry is not None and not entry.lease_lost.is_set():
                entry.lease_lost.set()
                log_job(
                    self.log,
                    logging.WARNING,
                    entry.claimed.doc,
                    "lease lost while running; this worker will not record its outcome",
                )
                self.hooks.emit("on_lease_lost", entry.claimed.doc)

    def confirm_slow_claims(self, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
        """Renew at once the leases of a claim that took longer than a heartbeat interval; drop lapsed ones.

        A lease's expiry is computed before the claim is sent, so on a busy
        server the round trip can use up much of a short lease before the
        job would start. Those leases are renewed before their jobs start,
        and a job whose lease already lapsed (another worker may have taken
        it by now) is not started here: it must not run twice at once.
        """
        margin = timedelta(milliseconds=self.config.lease_ms - self.config.heartbeat_interval_ms)
        now = self.store.now()
        slow = {c.id: c.token for c in claimed if c.doc["lease_expires_at"] - now < margin}
        if not slow:
            return claimed
        started = time.monotonic()
        try:
            lost = self.store.jobs.heartbeat(slow, claims={c.id: c for c in claimed if c.id in slow}).lost
        except Exception:  # the regular heartbeat and the fenced writes take over
            self.log.warning("could not renew the leases of a slow claim at once", exc_info=True)
            return claimed
        self.log.debug("renewed %d slow claim(s) in %.3fs", len(slow), time.monotonic() - started)
        for c in claimed:
            if c.id in lost:
                log_job(
                    self.log, logging.WARNING, c.doc, "lease lapsed while the claim was in flight; not started here"
                )
                self.store.limits.release(c.id, c.token)  # never runs here: its limiter slots are free
        return [c for c in claimed if c.id not in lost]
