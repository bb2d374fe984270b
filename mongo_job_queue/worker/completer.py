"""Writing completions: inline (one fenced write per job) or by group commit.

The executor hands every completion to a completer. :class:`InlineCompleter`
writes it before returning. :class:`GroupCompleter` (``batch_acks``) hands it
to an :class:`AckBuffer`:

A handler thread hands its finished job to the buffer and takes the next
job at once; one flusher thread writes all completions that arrived while
its previous bulk write was in flight, in one bulk write (each update fenced
by its own lease token; a flush of one is that one fenced write). Nothing
waits on a timer: when the queue is quiet a completion is written
immediately, and under load the batches grow by themselves, which is how
River gets its batched-completion speed without delaying any job by more
than one round trip.

Completions still in the buffer when the process dies are simply not
recorded: their jobs stay ``processing`` until lease expiry and run again,
which at-least-once already allows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Optional

from ..model import job_log_extra
from ..store import ClaimedJob, JobStore
from .inflight import InflightTable, RunKey, run_key
from .timeouts import deadline_after, join

__all__ = ["AckBuffer", "Completer", "GroupCompleter", "InlineCompleter", "OnAcked"]

log = logging.getLogger(__name__)

#: Called once per job with True (recorded), False (lease lost) or None (write failed).
OnAcked = Callable[[ClaimedJob, Optional[bool]], None]


class AckBuffer:
    """Group-commit buffer of completions, flushed by one background thread."""

    def __init__(
        self, store: JobStore, on_acked: OnAcked, *, logger: Optional[logging.Logger] = None, name: str = "mjq"
    ) -> None:
        self.store = store
        self.on_acked = on_acked
        self.log = logger or log
        self._cond = threading.Condition()
        self._pending: list[tuple[ClaimedJob, Any]] = []
        self._in_flight = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-acks", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        """The flusher thread, which the worker tracks and joins as its own."""
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def submit(self, claimed: ClaimedJob, result: Any) -> None:
        """Queue a completion; it is written within one bulk-write round trip."""
        with self._cond:
            if self._closed:
                raise RuntimeError("ack buffer is closed")
            self._pending.append((claimed, result))
            self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Flush what is buffered and stop; True if everything was written in time."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return join(self._thread, deadline_after(timeout))

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return  # closed and drained
                batch, self._pending = self._pending, []
                self._in_flight = len(batch)
            try:
                self._flush(batch)
            except BaseException:
                self.log.exception("batched completion failed unexpectedly")
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()

    def _flush(self, batch: list[tuple[ClaimedJob, Any]]) -> None:
        """Write and report every completion of ``batch``, whatever a write or a callback raises.

        Each job is written (in the bulk write, or on its own after it) and
        reported exactly once: an exception of any kind, ``SystemExit`` from
        a callback included, is contained per job, so it can neither leave
        the rest of the flush unwritten nor leave a job in the in-flight
        acknowledgement set, whose lease would then be renewed forever.
        """
        known: dict[RunKey, bool] = {}
        try:
            if len(batch) == 1:
                # Nothing to group (a quiet queue, concurrency 1): the single write costs
                # less than a bulk write of one, and tells a lost lease itself.
                claimed, result = batch[0]
                known[run_key(claimed)] = self.store.jobs.complete(claimed, result)
            else:
                known = dict.fromkeys(self.store.jobs.complete_many(batch), True)
        except BaseException:  # fall back to one write per job below
            self.log.warning(
                "batched completion of %d job(s) failed; writing them one by one", len(batch), exc_info=True
            )
        for claimed, result in batch:
            outcome: Optional[bool] = None
            try:
                # Not known: lost lease, or a write the server rejected;
                # the single write tells which (and raises for the latter).
                outcome = known.get(run_key(claimed))
                if outcome is None:
                    outcome = self.store.jobs.complete(claimed, result)
            except BaseException:  # the lease expires and the job runs again
                self.log.exception(
                    "could not record the completion of job %s", claimed.id, extra=job_log_extra(claimed.doc)
                )
            try:
                self.on_acked(claimed, outcome)
            except BaseException:  # a reporting callback must not stop the flush
                self.log.exception("ack callback failed for job %s", claimed.id, extra=job_log_extra(claimed.doc))


class InlineCompleter:
    """Writes each completion before the handler thread moves on."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def complete(self, claimed: ClaimedJob, result: Any) -> Optional[bool]:
        """True if recorded, False if the lease was lost; never None (nothing is deferred)."""
        return self.store.jobs.complete(claimed, result)

    def close(self, timeout: float) -> bool:
        return True

    @property
    def thread(self) -> Optional[threading.Thread]:
        """No thread of its own."""
        return None


class GroupCompleter:
    """Hands completions to a group-commit buffer; ``on_acked`` reports each once it is written.

    The run stays in the in-flight table's acknowledgement set until its
    write lands, so the heartbeat keeps renewing its lease meanwhile.
    """

    def __init__(
        self,
        store: JobStore,
        table: InflightTable,
        on_acked: OnAcked,
        *,
        logger: Optional[logging.Logger] = None,
        name: str = "mjq",
    ) -> None:
        self.store = store
        self.table = table
        self._report = on_acked
        self._buffer = AckBuffer(store, self._acked, logger=logger, name=name)
        self._buffer.start()

    def complete(self, claimed: ClaimedJob, result: Any) -> Optional[bool]:
        """None: buffered, reported later through ``on_acked``; else written directly (buffer closed)."""
        self.table.begin_ack(claimed)
        try:
            self._buffer.submit(claimed, result)
        except RuntimeError:  # closed by stop() meanwhile: write it directly
            self.table.end_ack(run_key(claimed))
            return self.store.jobs.complete(claimed, result)
        return None

    def close(self, timeout: float) -> bool:
        """Write what is buffered and stop the flusher; True if it finished in time."""
        return self._buffer.close(timeout)

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The flusher thread: a stop waits for it and names it while it runs, as the worker's other threads."""
        return self._buffer.thread

    def _acked(self, claimed: ClaimedJob, outcome: Optional[bool]) -> None:
        try:
            self._report(claimed, outcome)
        finally:
            self.table.end_ack(run_key(claimed))


#: What the executor writes completions through.
Completer = InlineCompleter | GroupCompleter
