"""The in-flight table: this worker's claimed runs, keyed by run (job id and lease token).

One job can have two runs in one worker: a run that lost its lease (its
handler still running) and a newer claim of the same job after a sweep
requeued it. Every piece of per-run state is therefore keyed by
``(job id, lease token)``, never by the job id alone, so the end of the old
run cannot remove the new run's entry nor lend its stale token to the
heartbeat.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Optional

from bson import ObjectId

from ..context import RunState
from ..model import job_log_extra
from ..store import ClaimedJob

__all__ = ["InflightTable", "RunKey", "log_job", "run_key"]

#: Identifies one run of one job: the job id and the lease token of its claim.
RunKey = tuple[ObjectId, str]


def run_key(claimed: ClaimedJob) -> RunKey:
    """The key of the run that ``claimed`` started."""
    return (claimed.id, claimed.token)


class InflightTable:
    """Runs claimed by this worker that are running, queued for a handler, or awaiting their completion write.

    ``cond`` guards the table and is notified whenever a run leaves its
    handler slot, for the poller waiting for a free slot. ``emptied`` shares
    its lock and is notified only when nothing is left in flight, for
    ``stop()`` and a released heartbeat waiting for that: a busy worker's
    other threads are not woken twice per job for nothing.
    """

    def __init__(self) -> None:
        #: The one lock of the table and of every condition waiting on it (re-entrant).
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.emptied = threading.Condition(self.lock)
        #: The heartbeat's own wake-up (a start, a release, a new config), on the same lock.
        self.beat = threading.Condition(self.lock)
        self._runs: dict[RunKey, RunState] = {}
        # Finished runs whose completion is buffered in the group-commit
        # buffer: their leases are renewed until the write lands.
        self._acking: dict[RunKey, ClaimedJob] = {}
        # Claim order of every run in either map: the newest run of a job is
        # the one whose token the document carries, whichever map it is in.
        self._order: dict[RunKey, int] = {}
        self._claims = itertools.count()
        # Runs of a chunk (worker/chunks.py): in flight, but on the chunk's own thread, not in a handler slot.
        self._slotless: set[RunKey] = set()

    def add(self, claimed: ClaimedJob, *, holds_slot: bool = True) -> RunState:
        """Enter a new run (of a chunk: ``holds_slot=False``); an older run of the same job has lost its lease."""
        with self.cond:
            for (job_id, _), state in self._runs.items():
                if job_id == claimed.id:
                    state.lease_lost.set()  # the document now carries the new claim's token
            state = RunState(claimed)
            key = run_key(claimed)
            self._runs[key] = state
            self._order[key] = next(self._claims)
            if not holds_slot:
                self._slotless.add(key)
            return state

    def _forget(self, key: RunKey) -> None:
        if key not in self._runs and key not in self._acking:
            self._order.pop(key, None)

    def get(self, key: RunKey) -> Optional[RunState]:
        with self.cond:
            return self._runs.get(key)

    def _notify_if_empty(self) -> None:
        if not self._runs and not self._acking:
            self.emptied.notify_all()

    def remove(self, key: RunKey) -> None:
        with self.cond:
            self._runs.pop(key, None)
            self._slotless.discard(key)
            self._forget(key)
            self.cond.notify_all()
            self._notify_if_empty()

    def begin_ack(self, claimed: ClaimedJob) -> None:
        with self.cond:
            key = run_key(claimed)
            self._acking[key] = claimed
            self._order.setdefault(key, next(self._claims))  # a run that was never in the table is newest

    def end_ack(self, key: RunKey) -> None:
        with self.cond:
            self._acking.pop(key, None)
            self._forget(key)
            self._notify_if_empty()  # a buffered completion never held a slot: the poller has nothing to see

    def running(self) -> list[RunState]:
        with self.cond:
            return list(self._runs.values())

    def __len__(self) -> int:
        """Runs holding a handler slot (queued or running); buffered completions do not."""
        with self.cond:
            return len(self._runs) - len(self._slotless)

    def busy(self) -> bool:
        """Whether any run is still in flight, its completion write included."""
        with self.cond:
            return bool(self._runs or self._acking)

    def leases(self) -> dict[ObjectId, str]:
        """The token to renew per job: its newest run's, by claim order (a buffered completion's too).

        A job's older runs have lost their lease by definition, whether they
        are still running or awaiting their completion write, so their stale
        tokens are never renewed in place of the newest one.
        """
        return {job_id: claimed.token for job_id, claimed in self.claims().items()}

    def claims(self) -> dict[ObjectId, ClaimedJob]:
        """The newest run per job (see :meth:`leases`): its token, and the shard key values its writes carry."""
        with self.cond:
            live = {key: state.claimed for key, state in self._runs.items() if not state.lease_lost.is_set()}
            newest: dict[ObjectId, tuple[RunKey, ClaimedJob]] = {}
            for key, claimed in [*self._acking.items(), *live.items()]:
                held = newest.get(key[0])
                if held is None or self._order.get(key, -1) > self._order.get(held[0], -1):
                    newest[key[0]] = (key, claimed)
            return {job_id: claimed for job_id, (_, claimed) in newest.items()}

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the table to empty; True if it did."""
        with self.cond:
            return self.emptied.wait_for(lambda: not self._runs and not self._acking, timeout=timeout)

    def clear(self) -> None:
        """Forget every run, in a forked child (its parent's runs are not its own), with a fresh lock.

        Not by taking the lock: a parent thread (the heartbeat, which can
        outlive ``stop()`` for an abandoned handler's limiter slots) may have
        held it at the fork, and in the child nobody would release it.
        """
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.emptied = threading.Condition(self.lock)
        self.beat = threading.Condition(self.lock)
        self._runs.clear()
        self._acking.clear()
        self._order.clear()
        self._slotless.clear()


def log_job(
    logger: logging.Logger, level: int, doc: dict[str, Any], msg: str, *args: Any, exc_info: bool = False
) -> None:
    """Log a line about a job: its identity in the text, for plain formatters, and in ``extra``, for JSON ones."""
    if logger.isEnabledFor(level):
        logger.log(
            level,
            f"job %s (%s, queue %s, attempt %s): {msg}",  # noqa: G004 - literal templates; args stay lazy
            doc.get("_id"),
            doc.get("type"),
            doc.get("queue"),
            doc.get("attempts"),
            *args,
            extra=job_log_extra(doc),
            exc_info=exc_info,
        )
