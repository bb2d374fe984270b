"""The notice that jobs reached a final status: what batches and dependent jobs wait on.

A final write (``completed``, ``failed`` for good, ``cancelled``) is the
moment other work may be waiting for. Every place in the store that writes
one (the worker's fenced outcomes, lease recovery, quarantine, the
operator's cancels) tells :class:`FinalWrites` once the write has landed,
with the job's document as the writer knows it.

The notice comes after the write, never inside it, so a process that dies
in between loses it: every listener must have a sweep that finds what such
a crash left undone (batches recount, blocked jobs are re-checked). A
listener that raises is logged and the final write stands; its sweep
catches up. Every queue registers the two (store/batches.py,
store/dependencies.py); each costs nothing for a job outside its feature
beyond a look at the document, and the dependencies' probe for blocked
jobs at most once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId

__all__ = ["SWEEP_MIN_INTERVAL_S", "FinalJob", "FinalListener", "FinalSweep", "FinalWrites"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalJob:
    """One job that reached a final status, with its document as the writer had it."""

    id: ObjectId
    status: str
    #: The document as the writer read it (the claim, a cancel's projection of
    #: :attr:`FinalWrites.fields`): fields set at insert, such as a batch id,
    #: are there; fields written since may be stale.
    doc: Mapping[str, Any]


#: Called with the jobs that just ended, in the writer's thread; it must be quick and must not block.
FinalListener = Callable[[Sequence[FinalJob]], None]
#: A listener's sweep: one bounded step finding what lost notices left undone; run by the worker's maintenance.
FinalSweep = Callable[[datetime], object]
#: The sweeps run every ``sweep_interval_ms``, but never more often than this: they catch up on rare losses.
SWEEP_MIN_INTERVAL_S = 5.0


class FinalWrites:
    """The listeners told of each final write; registered by the features that wait on jobs."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._lock = threading.Lock()
        self._listeners: tuple[FinalListener, ...] = ()
        self._fields: frozenset[str] = frozenset()
        self._sweeps: tuple[FinalSweep, ...] = ()
        self._closes: tuple[Callable[[float], object], ...] = ()

    def add(
        self,
        listener: FinalListener,
        *,
        fields: Iterable[str] = (),
        sweep: FinalSweep | None = None,
        close: Callable[[float], object] | None = None,
    ) -> None:
        """Register ``listener``; ``fields``: what it reads of a document (writers without one project them).

        ``sweep``: the listener's catch-up step, which every running worker's
        maintenance thread calls (:meth:`sweep`) every ``sweep_interval_ms``
        (at least :data:`SWEEP_MIN_INTERVAL_S`). ``close(timeout)``: waits for
        the work the listener queued off the writers' threads (a worker's stop).
        """
        with self._lock:
            if close is not None and close not in self._closes:
                self._closes = (*self._closes, close)
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)
            self._fields = self._fields | frozenset(fields)
            if sweep is not None and sweep not in self._sweeps:
                self._sweeps = (*self._sweeps, sweep)

    def sweep(self, now: datetime) -> None:
        """Run each listener's sweep once; one that raises is logged and the others still run."""
        for step in self._sweeps:
            try:
                step(now)
            except Exception:  # noqa: BLE001 - the next round tries again
                self._log.exception("a sweep of final writes failed; the next round tries again")

    def close(self, timeout: float) -> None:
        """A worker stops: each listener finishes what it queued, within ``timeout`` s in all."""
        deadline = time.monotonic() + timeout
        for close in self._closes:
            try:
                close(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - the sweeps catch up
                self._log.exception("a listener of final writes failed to finish at stop; its sweep will catch up")

    @property
    def active(self) -> bool:
        """Whether any listener is registered: writers skip the notice (and any read for it) when not."""
        return bool(self._listeners)

    @property
    def fields(self) -> frozenset[str]:
        """The fields the listeners read, for a writer that must read the documents to tell them."""
        return self._fields

    def notify(self, jobs: Sequence[FinalJob]) -> None:
        """Tell every listener of ``jobs``; a listener that raises is logged, never propagated."""
        if not jobs:
            return
        for listener in self._listeners:
            try:
                listener(jobs)
            except Exception:  # noqa: BLE001 - the final write stands; the listener's sweep catches up
                self._log.exception(
                    "a listener of final writes failed for %d job(s); its sweep will catch up",
                    len(jobs),
                    extra={"job_id": str(jobs[0].id)},
                )

    def notify_one(self, doc: Mapping[str, Any], status: str) -> None:
        """Tell the listeners that the job of ``doc`` ended ``status`` (a no-op without listeners)."""
        if self._listeners:
            self.notify([FinalJob(doc["_id"], status, doc)])
