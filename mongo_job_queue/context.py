"""What a running handler's job instance knows about its run: cancel requests and progress.

The worker attaches a :class:`JobContext` to the job instance it passes to the
handler, so that :meth:`BaseJob.is_cancel_requested` and
:meth:`BaseJob.report_progress` reach the store under the claim's lease
token without the handler seeing either.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import InvalidJobError, JobCancelled, LeaseExpired
from .store import ClaimedJob, JobStore

__all__ = ["JobContext", "RunState"]

#: Longest progress message kept; longer ones are cut.
MAX_PROGRESS_MESSAGE_CHARS = 1_000


@dataclass
class RunState:
    """Flags one run (one claim, one lease token) shares between its handler thread and the heartbeat."""

    claimed: ClaimedJob
    lease_lost: threading.Event = field(default_factory=threading.Event)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    #: Given up past its time limit and grace (see :mod:`.worker.timelimits`): its thread was replaced.
    abandoned: threading.Event = field(default_factory=threading.Event)
    #: Progress not yet written (throttled); the next heartbeat carries it.
    progress: Optional[dict[str, Any]] = None
    progress_written_at: float = -math.inf
    #: In a chunk: what ``report_progress`` would have raised (see :class:`JobContext`); it ends this job only.
    stopped: Optional[BaseException] = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_progress(self) -> Optional[dict[str, Any]]:
        with self.lock:
            progress, self.progress = self.progress, None
            return progress

    def restore_progress(self, progress: dict[str, Any]) -> None:
        """Put back a report that a failed heartbeat took, unless a newer one arrived meanwhile."""
        with self.lock:
            if self.progress is None:
                self.progress = progress


class JobContext:
    """Attached to the handler's job instance as ``_mjq_context`` by the worker."""

    def __init__(self, store: JobStore, state: RunState, *, in_chunk: bool = False) -> None:
        self.store = store
        self.state = state
        #: A job of a chunk: its report never raises, as that would end the call for every job of the chunk.
        self.in_chunk = in_chunk

    def cancel_requested(self) -> bool:
        return self.state.cancel_requested.is_set()

    def report_progress(self, percent: float, message: Optional[str]) -> None:
        """Store progress under the lease; raise JobCancelled if a cancel was requested.

        Written at once unless the previous write is less than
        ``progress_min_interval_ms`` old; then it is kept and the next
        heartbeat (or report) writes it, so a tight loop costs no round trips.
        Either way the run's claim keeps it as its latest report, which the
        completion writes: the last report before the handler returns is never lost.
        In a chunk it does not raise but records the exception on the run
        (``RunState.stopped``): the chunk's call goes on, and that job alone
        ends as if its own handler had raised it (see docs/chunks.rst).
        """
        progress: Optional[dict[str, Any]] = _progress_doc(percent, message, self.store.now())
        state = self.state
        if state.lease_lost.is_set():
            return self._stop(LeaseExpired(f"job {state.claimed.id}: lease lost; another worker may run it"))
        interval = self.store.config.progress_min_interval_ms / 1000
        with state.lock:
            state.claimed.progress = progress
            if time.monotonic() - state.progress_written_at < interval:
                state.progress = progress
                progress = None
            else:
                state.progress = None
                state.progress_written_at = time.monotonic()
        if progress is not None:
            outcome = self.store.jobs.write_progress(state.claimed, progress)
            if outcome is None:
                state.lease_lost.set()
                return self._stop(LeaseExpired(f"job {state.claimed.id}: lease lost; another worker may run it"))
            if outcome:
                state.cancel_requested.set()
        if state.cancel_requested.is_set():
            self._stop(JobCancelled(f"job {state.claimed.id}: cancellation requested"))

    def _stop(self, exc: BaseException) -> None:
        """Raise ``exc`` into the handler; in a chunk, record it on the run instead (a lost lease outranks a cancel)."""
        if not self.in_chunk:
            raise exc
        with self.state.lock:
            if not isinstance(self.state.stopped, LeaseExpired):
                self.state.stopped = exc


def _progress_doc(percent: Any, message: Any, now: Any) -> dict[str, Any]:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise InvalidJobError(f"progress percent must be a number from 0 to 100, got {percent!r}")
    if math.isnan(percent):
        raise InvalidJobError("progress percent must not be NaN")
    if message is not None and not isinstance(message, str):
        raise InvalidJobError(f"progress message must be a str or None, got {type(message).__name__}")
    doc: dict[str, Any] = {"percent": percent, "at": now}
    if message is not None:
        doc["message"] = message[:MAX_PROGRESS_MESSAGE_CHARS]
    return doc
