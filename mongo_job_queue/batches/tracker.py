"""When a batch's callbacks fire: after each final write of one of its jobs, and in the reconciler's sweep.

The check is the same wherever it runs: read the batch document, count
its jobs by status (from the jobs themselves, never a stored counter),
and fire what the counts call for:

* ``failure`` as soon as one job is ``failed``;
* once the batch is sealed and no job is unfinished, ``success`` (when
  every counted job is ``completed``) and ``complete``, then the batch is
  marked ``finished`` (``$set`` only from ``sealed`` and the ``gen`` read
  before counting: a ``retry_batch`` in between increments it, so counts
  taken before the retry cannot finish the batch after it).

Firing an event is three writes, in this order, each idempotent:

1. ``$min`` of ``firing.<event>`` in the batch document, only while the
   event is not in ``fired`` (else: nothing to do);
2. the callback job, inserted through the one insert path with the
   ``_id`` allocated when the batch was created: a second insert of it,
   by a process that finished the batch's other last job at the same
   moment or by the reconciler after a crash, is refused by the ``_id``;
3. ``$addToSet`` of the event to ``fired``.

A crash after 1 or 2 leaves the event firing and not fired: the next check
(the reconciler's) inserts again, a no-op when the job is there. Only
retention could make that second insert a second job, by deleting the
callback job (run and expired) in between; so once ``firing`` is older
than the shortest retention the check marks the event fired without
inserting (see docs/batches.rst).

The notice of a final write comes in the writer's thread, which must not
block: while the worker runs, :class:`BatchTracker` hands the batch ids to
one checker thread per process (else, as in eager mode, ``run_once()`` or
an operator's cancel, it checks at once). A notice lost to a crash, a listener that
raised, or a checker that died is caught by :meth:`BatchTracker.run_once`,
the reconciler, which every running worker calls every ``sweep_interval_ms`` (but no more often than every 5 s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Optional

from bson import ObjectId

from ..after_fork import renew_in_child
from ..enqueue import EagerFlags, Enqueuer
from ..status import COMPLETED, FAILED
from ..store import JobStore
from ..store.batches import FINISHED_STATE, OPEN, SEALED, unfinished
from ..store.finals import FinalJob

__all__ = ["EVENTS", "OPEN_STALE_AFTER", "STALE_AFTER", "BatchTracker"]

log = logging.getLogger(__name__)

#: The callback events, in the order they fire when a batch finishes.
EVENTS = ("failure", "success", "complete")
#: The reconciler rechecks an unfinished batch no write touched for this long.
STALE_AFTER = timedelta(seconds=30)
#: ... and an open batch no write touched for this long (it cannot finish; its on_failure may fire).
OPEN_STALE_AFTER = timedelta(minutes=10)
#: At most this many batches per reconciler step.
SWEEP_LIMIT = 100
#: A batch add's staged jobs not released by then belong to an add that died: each of its steps is bounded by
#: ``db_timeout_ms`` and its retries, so a live add takes seconds, never minutes.
STAGED_ABANDONED_AFTER = timedelta(minutes=10)
#: The checker thread ends after this long without a notice.
_CHECKER_IDLE_S = 5.0


class BatchTracker:
    """Checks batches after their jobs' final writes, fires their callbacks once, and reconciles."""

    def __init__(
        self,
        store: JobStore,
        enqueuer: Enqueuer[Any],
        flags: EagerFlags,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self._store = store
        self._enqueuer = enqueuer
        self._flags = flags
        self.log = logger or log
        self._cond = threading.Condition()
        #: Batches to check, each with whether a job of it failed for good.
        self._pending: dict[ObjectId, bool] = {}
        #: The checker thread is checking a batch it took off ``_pending``.
        self._checking = False
        self._thread: Optional[threading.Thread] = None
        #: Test hook: called with (batch id, event) between the firing mark and the callback's insert.
        self.before_insert: Optional[Callable[[ObjectId, str], None]] = None
        store.finals.add(self.on_final, fields=("batch_id",), sweep=self.run_once, close=self.close)
        renew_in_child(self)

    def _after_fork_in_child(self) -> None:
        # A forked child has no checker thread, and the parent's lock may have been held at fork().
        self._cond, self._pending, self._checking, self._thread = threading.Condition(), {}, False, None

    # -- the notice ---------------------------------------------------------

    def on_final(self, jobs: Sequence[FinalJob]) -> None:
        """The listener of final writes: the batches of ``jobs`` are checked, off the writer's thread."""
        failed: dict[ObjectId, bool] = {}
        for job in jobs:
            batch_id = job.doc.get("batch_id")
            if isinstance(batch_id, ObjectId):
                failed[batch_id] = failed.get(batch_id, False) or job.status == FAILED
        if not failed:
            return
        if self._flags.eager or not self._enqueuer.worker.running:
            # No pool to hold up: a test's eager run, run_once() or drain(), an admin's cancel. Checked now.
            for batch_id, any_failed in failed.items():
                self.check_logged(batch_id, failed=any_failed, full=False)
            return
        with self._cond:
            self._start_checker()
            for batch_id, any_failed in failed.items():
                # Notices for a batch already queued merge into one check.
                self._pending[batch_id] = self._pending.get(batch_id, False) or any_failed
            self._cond.notify()

    def _start_checker(self) -> None:
        # Under the condition's lock: the first notice starts the thread, and one that died is replaced.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run_checker, name="mjq-batch-checker", daemon=True)
            self._thread.start()

    def _run_checker(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._cond.wait(_CHECKER_IDLE_S)
                if not self._pending:
                    self._thread = None  # idle: the next notice starts another
                    return
                batch_id = next(iter(self._pending))
                failed = self._pending.pop(batch_id)
                self._checking = True
            try:
                self.check_logged(batch_id, failed=failed, full=False)
            finally:
                with self._cond:
                    self._checking = False
                    self._cond.notify_all()  # a close() waits for the checks queued before it

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the checks queued so far (a worker's graceful stop); True if none is left.

        A process that exits right after its worker's stop would otherwise
        lose them to its daemon checker thread (the reconciler of another
        worker would catch up, 30 s later at best). Checks whose thread died
        are run here.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._checking:
                alive = self._thread is not None and self._thread.is_alive()
                left = deadline - time.monotonic()
                if not alive or left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            orphans = {} if self._thread is not None and self._thread.is_alive() else dict(self._pending)
            for batch_id in orphans:
                del self._pending[batch_id]
            idle = not self._pending and not self._checking
        for batch_id, failed in orphans.items():
            self.check_logged(batch_id, failed=failed, full=False)
        return idle or bool(orphans)

    # -- the check ----------------------------------------------------------

    def check_logged(self, batch_id: ObjectId, *, failed: bool = False, full: bool = True) -> None:
        """:meth:`check`, its failure logged rather than raised: what it left undone, the reconciler does."""
        try:
            self.check(batch_id, failed=failed, full=full)
        except Exception:
            self.log.exception("batch %s: check failed; the reconciler will catch up", batch_id)

    def check(self, batch_id: ObjectId, *, failed: bool = False, full: bool = True) -> Optional[dict[str, int]]:
        """Count the batch's jobs and fire what the counts call for; the counts, None if not counted.

        After a notice (``full=False``) an open batch is not counted: only
        a failure the notice told of (``failed``) can fire before the seal.
        The seal and the reconciler count every time.
        """
        doc = self._store.batches.get(batch_id)
        if doc is None or doc.get("state") == FINISHED_STATE:
            return None
        fired = set(doc.get("fired") or ())
        callbacks: Mapping[str, Any] = doc.get("callbacks") or {}
        if not full and doc.get("state") != SEALED:
            if failed:
                self._saw_failure(doc)
                if "failure" in callbacks and "failure" not in fired:
                    self.fire(doc, "failure")
            return None
        counts = self._store.batches.counts(batch_id)
        done = doc.get("state") == SEALED and unfinished(counts) == 0
        due = []
        if counts.get(FAILED) or failed:
            self._saw_failure(doc)
            due.append("failure")
        if done:
            # A failure seen once (since the last retry) is never outweighed by its job's removal (purge, retention).
            if counts.get(COMPLETED, 0) == sum(counts.values()) and not doc.get("saw_failure"):
                due.append("success")
            due.append("complete")
        for event in due:
            if event in callbacks and event not in fired:
                self.fire(doc, event)
        if done and self._store.batches.finish(batch_id, doc.get("gen")):
            self.log.info("batch %s finished: %s", batch_id, counts, extra={"batch_id": str(batch_id)})
        return counts

    def _saw_failure(self, doc: Mapping[str, Any]) -> None:
        if not doc.get("saw_failure"):
            self._store.batches.saw_failure(doc["_id"])

    def fire(self, doc: Mapping[str, Any], event: str) -> bool:
        """Insert ``event``'s callback job once (see the module docstring); False if it had been fired."""
        batch_id = doc["_id"]
        go, first = self._store.batches.begin_firing(batch_id, event)
        if not go:
            return False
        keep = self._shortest_retention()
        if first is not None and keep is not None and self._store.now() - first > keep:
            # Fired long ago by a process that died before recording it: its job may be run and deleted since.
            self.log.warning(
                "batch %s: the %s callback began firing at %s, longer ago than retention keeps jobs; "
                "recorded as fired without inserting it again",
                batch_id,
                event,
                first,
                extra={"batch_id": str(batch_id)},
            )
            self._store.batches.mark_fired(batch_id, event)
            return False
        if self.before_insert is not None:
            self.before_insert(batch_id, event)
        callback = doc["callbacks"][event]
        job_id = callback["id"]
        managed = {"_id": job_id, "batch_callback": {"batch_id": batch_id, "event": event}}
        self._enqueuer.enqueue(callback["job"], dict(doc.get("extra") or {}), managed)  # a no-op by the _id if stored
        self._store.batches.mark_fired(batch_id, event)
        self.log.info("batch %s: %s callback %s enqueued", batch_id, event, job_id, extra={"batch_id": str(batch_id)})
        return True

    def _shortest_retention(self) -> Optional[timedelta]:
        config = self._store.config
        kept = [config.retention_completed_ms, config.retention_failed_ms, config.retention_cancelled_ms]
        finite = [ms for ms in kept if ms is not None]
        return timedelta(milliseconds=min(finite)) if finite else None

    # -- the reconciler -----------------------------------------------------

    def run_once(self, now: Optional[datetime] = None) -> int:
        """One reconciler step: recheck up to 100 unfinished batches; how many were checked.

        Sealed batches untouched for 30 s come first: only they can finish.
        Open ones (only their ``on_failure`` can fire; an opener that died
        leaves one open for ever, until ``queue.seal_batch``) are rechecked
        when untouched for 10 min, in what room the sealed ones left.
        """
        now = now if now is not None else self._store.now()
        due = self._store.batches.stale(SEALED, now - STALE_AFTER, SWEEP_LIMIT)
        if len(due) < SWEEP_LIMIT:
            due += self._store.batches.stale(OPEN, now - OPEN_STALE_AFTER, SWEEP_LIMIT - len(due))
        for batch_id in due:
            self._store.batches.touch(batch_id, now)
            try:
                removed = self._store.batches.remove_abandoned_staged(batch_id, now - STAGED_ABANDONED_AFTER)
            except Exception:
                self.log.exception("batch %s: could not remove abandoned staged jobs", batch_id)
            else:
                if removed:
                    self.log.warning("batch %s: removed %d job(s) of an add that died before it was confirmed",
                                     batch_id, removed, extra={"batch_id": str(batch_id)})  # fmt: skip
            self.check_logged(batch_id)
        return len(due)
