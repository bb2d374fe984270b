"""The worker's lease keeper: heartbeats, the orphan sweep and the hygiene sweep.

A mixin of :class:`~mongo_job_queue.worker.Worker`, split from
:mod:`.worker` for size. One thread runs :meth:`LeaseKeeper._lease_loop`:
it renews the leases of this worker's running jobs well before they expire,
returns the expired leases of crashed workers to the queue, and fails job
documents damaged by hand that no claim would ever match.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import LeaseExpired, MalformedJob
from .failures import error_record
from .retry_limit import max_retries_of
from .validation import stored_job_problems

if TYPE_CHECKING:
    from bson import ObjectId

    from .config import QueueConfig
    from .context import RunState
    from .handlers import HandlerRegistry
    from .middleware import MiddlewareChain
    from .records import ClaimedJob
    from .store import JobStore

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Lease renewal and recovery; mixed into the Worker."""

    if TYPE_CHECKING:
        store: JobStore
        config: QueueConfig
        registry: HandlerRegistry
        hooks: MiddlewareChain
        log: logging.Logger
        _lock: threading.Condition
        _inflight: dict[ObjectId, RunState]
        _acking: dict[ObjectId, ClaimedJob]

        def _log_job(self, level: int, doc: dict[str, Any], msg: str, *args: Any, exc_info: bool = False) -> None: ...

    def _lease_loop(self, stopping: threading.Event) -> None:
        # Three clocks: heartbeat, orphan sweep and hygiene sweep. The thread
        # wakes for whichever is due first, so a sweep interval shorter than
        # the heartbeat is honoured (recovery promises lease + sweep interval).
        beat = self.config.heartbeat_interval_ms / 1000
        sweep_every = self.config.sweep_interval_ms / 1000
        hygiene_every = self.config.hygiene_interval_ms / 1000
        next_beat = next_sweep = next_hygiene = time.monotonic()  # at start: what a crash before this restart left
        while True:
            with self._lock:
                if stopping.is_set() and not self._inflight and not self._acking:
                    return
            now = time.monotonic()
            # The beat first: a slow sweep must not delay the renewal of live leases.
            if now >= next_beat:
                next_beat = now + beat
                try:
                    self.renew_leases()
                except Exception:
                    self.log.exception("lease renewal failed; retrying at the next heartbeat")
            if not stopping.is_set() and now >= next_sweep:
                next_sweep = now + sweep_every
                try:
                    self.recover_orphans()
                except Exception:
                    self.log.exception("lease recovery sweep failed")
            if not stopping.is_set() and now >= next_hygiene:
                next_hygiene = now + hygiene_every
                try:
                    self.fail_malformed_jobs()
                except Exception:
                    self.log.exception("malformed-job sweep failed")
            wake_at = next_beat if stopping.is_set() else min(next_beat, next_sweep, next_hygiene)
            with self._lock:
                self._lock.wait_for(
                    lambda: stopping.is_set() and not self._inflight and not self._acking,
                    timeout=max(0.0, wake_at - time.monotonic()),
                )

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
        try:
            lost = self.store.heartbeat(slow).lost
        except Exception:  # the regular heartbeat and the fenced writes take over
            self.log.warning("could not renew the leases of a slow claim at once", exc_info=True)
            return claimed
        for c in claimed:
            if c.id in lost:
                self._log_job(logging.WARNING, c.doc, "lease lapsed while the claim was in flight; not started here")
        return [c for c in claimed if c.id not in lost]

    def renew_leases(self) -> None:
        """Extend the leases of running jobs; flag the ones that were lost."""
        with self._lock:
            live = {job_id: f for job_id, f in self._inflight.items() if not f.lease_lost.is_set()}
            leases = {job_id: f.claimed.token for job_id, f in live.items()}
            leases.update((job_id, claimed.token) for job_id, claimed in self._acking.items())
        progress = {job_id: p for job_id, f in live.items() if (p := f.take_progress()) is not None}
        beat = self.store.heartbeat(leases, progress)
        for job_id in beat.cancel_requested:
            with self._lock:
                entry = self._inflight.get(job_id)
            if entry is not None and not entry.cancel_requested.is_set():
                entry.cancel_requested.set()
                self._log_job(logging.INFO, entry.claimed.doc, "cancellation requested; telling the handler")
        for job_id in beat.lost:
            with self._lock:
                entry = self._inflight.get(job_id)
            if entry is not None and not entry.lease_lost.is_set():
                entry.lease_lost.set()
                self._log_job(
                    logging.WARNING,
                    entry.claimed.doc,
                    "lease lost while running; this worker will not record its outcome",
                )
                self.hooks.emit("on_lease_lost", entry.claimed.doc)

    def recover_orphans(self) -> tuple[int, int]:
        """Return expired leases to the queue; fail jobs that used up their attempts.

        Returns:
            ``(requeued, failed)`` counts.
        """
        requeued = failed = 0
        for doc in self.store.expired_leases():
            problems = stored_job_problems(doc)
            if problems:  # e.g. 'errors' edited into a non-array: the rescue's $push would fail every time
                self._fail_malformed(doc, problems)
                failed += 1
                continue
            attempts = int(doc["attempts"])
            give_up = attempts >= max_retries_of(doc, self.registry.get(str(doc.get("type")))) + 1
            owner = doc.get("lease_owner") or {}
            exc = LeaseExpired(
                f"lease expired on attempt {attempts}: worker {owner.get('worker_id')} "
                f"(host {owner.get('host')}, pid {owner.get('pid')}) stopped renewing it"
            )
            record = error_record(
                exc, attempt=attempts, at=self.store.now(), token=doc.get("lease_token"), config=self.config
            )
            if not self.store.recover(doc, record, give_up):
                continue  # renewed or recovered by someone else in the meantime
            if doc.get("cancel_requested"):
                failed += 1
                self._log_job(logging.WARNING, doc, "cancelled: lease expired after its cancellation was requested")
                self.hooks.emit("on_cancelled", doc["_id"])
                continue
            self.hooks.emit("on_orphan_recovered", doc, failed=give_up)
            if give_up:
                failed += 1
                self._log_job(logging.ERROR, doc, "failed: lease expired and no attempts left")
            else:
                requeued += 1
                self._log_job(logging.WARNING, doc, "recovered from an expired lease")
        return requeued, failed

    def _fail_malformed(self, doc: dict[str, Any], problems: list[str], *, token: str | None = None) -> None:
        status = str(doc.get("status"))
        if self.store.quarantine(doc["_id"], problems, from_status=status, token=token):
            self._log_job(logging.ERROR, doc, "failed: malformed job document: %s", "; ".join(problems))
            self.hooks.emit("on_failed", doc, exc=MalformedJob("; ".join(problems)))

    def fail_malformed_jobs(self) -> int:
        """Fail stored jobs that no claim or sweep could handle; return how many."""
        failed = 0
        for doc in self.store.malformed_jobs():
            problems = stored_job_problems(doc)
            if problems:
                self._fail_malformed(doc, problems)
                failed += 1
        return failed
