"""Change-stream wake-ups: an idle worker hears about new jobs, and about pause changes, at once.

On a replica set the worker watches its database, in one change stream,
for jobs it can run (inserted pending, set back to pending, or given a new
``run_at``) and for changes of the pause document (which also carries the
limit definitions' version). Each wakes the idle poller, so pickup latency
is a round trip, and a pause or resume takes effect at once. While the
stream listens, the idle poller does not poll: it sleeps until the next
delayed job of its queues comes due (:mod:`mongo_job_queue.store.idle`), and
it reads the pause state only when the stream said it changed. Polling is
the fallback for standalone servers (no change streams) and while the
stream is broken. A broken stream resumes from its last token; when the
server no longer has that history, it restarts from now, and a reopened
stream wakes the poller (which reads the pause state again) to cover the gap.

Without the right to watch the database, the worker watches its jobs
collection only, and reads the pause state by ``pause_refresh_ms``.

A read can wait on the server for ``change_stream_max_await_ms``; ``stop()``
does not wait that out: it closes the stream from the stopping thread
(:meth:`ChangeStreamWaker.close`), which ends the read.

Deployments without change streams (a standalone mongod) can add a
:class:`WakeupChannel` (``queue.add_wakeup(...)``, e.g. Redis pub/sub in
:mod:`mongo_job_queue.contrib.redis`): every enqueue publishes on it once
its insert landed, and each worker runs the channel's listener beside the
change stream (:class:`Wakers`, one thread each). A channel is a hint:
a lost message costs only the next poll.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from pymongo.errors import OperationFailure

from ..bounded import BoundedChangeStream
from ..status import PENDING, PROCESSING
from ..store import JobStore
from ..store.control import PAUSE_ID

__all__ = [
    "ChangeStreamWaker",
    "StreamState",
    "Waker",
    "Wakers",
    "WakeupChannel",
    "namespace_of",
    "new_stream_state",
    "stream_state",
]

log = logging.getLogger(__name__)

# The server cannot run change streams at all (standalone mongod, or a test
# server without them): fall back to polling for good.
_UNSUPPORTED = frozenset({40573, 115, 59})
# The resume token is too old or invalid: start again from now.
_HISTORY_LOST = frozenset({286, 280, 260})
# Not allowed to watch the whole database: watch the jobs collection only.
_UNAUTHORIZED = frozenset({13})


@dataclass(eq=False)
class StreamState:
    """What one start's change stream tells its poller: whether it listens, and whether the pause state changed."""

    #: Set while a change stream is open and delivering events.
    listening: threading.Event = field(default_factory=threading.Event)
    #: Whether the stream also watches the pause document (a database-wide stream).
    watches_pause: bool = False
    #: Set when the pause document changed, or the stream may have missed a change: read it again.
    pause_changed: threading.Event = field(default_factory=threading.Event)
    #: Set when a job was claimed with a lease shorter than this worker's: its lease sweep reads again.
    short_lease_claimed: threading.Event = field(default_factory=threading.Event)
    #: The store's ``transient_errors`` when the stream's last read came back: a connection
    #: silently dead (a firewall that forgot it) keeps a read waiting and the stream "listening";
    #: an error met elsewhere since then makes the poller poll until the stream reads again.
    vouched_errors: int = -1

    def vouches(self, store: JobStore) -> bool:
        """Whether an idle poller may sleep by the stream: it listens and has read since the last transient error."""
        return self.listening.is_set() and self.watches_pause and self.vouched_errors == store.transient_errors


# One start's stream state, keyed by that start's stop event: the one thing the
# worker hands both to the poller thread and to the waker it builds.
_STATES: weakref.WeakKeyDictionary[threading.Event, StreamState] = weakref.WeakKeyDictionary()


def stream_state(stopping: threading.Event) -> Optional[StreamState]:
    """The change-stream state of the start whose stop event is ``stopping``; None without a change stream."""
    return _STATES.get(stopping)


def new_stream_state(stopping: threading.Event) -> StreamState:
    """The change-stream state of the start whose stop event is ``stopping``, made by its stream's waker."""
    return _STATES.setdefault(stopping, StreamState())


class Flag(Protocol):
    """What a waker's ``listening`` offers (a :class:`threading.Event` does)."""

    def is_set(self) -> bool: ...


class Waker(Protocol):
    """A listener that calls ``wake()`` when new jobs may be claimable; run in a thread of its own."""

    @property
    def listening(self) -> Flag: ...

    def run(self) -> None:
        """Listen until the start's stop event is set."""

    def close(self) -> None:
        """End a blocking read from the stopping thread (after the stop event is set)."""


class WakeupChannel(Protocol):
    """A way for enqueues to wake idle workers of other processes, beside (or instead of) change streams."""

    def publish(self, namespace: str, jobs: Sequence[tuple[str, str]]) -> None:
        """Tell listeners of ``namespace`` that due jobs of these ``(queue, type)`` were inserted; never raises."""

    def listener(
        self,
        namespace: str,
        types: Sequence[str],
        queues: Sequence[str],
        wake: Callable[[], None],
        stopping: threading.Event,
        logger: Optional[logging.Logger],
    ) -> Waker:
        """A :class:`Waker` calling ``wake()`` for published jobs of these queues and types, until ``stopping``."""


def namespace_of(store: JobStore) -> str:
    """``<database>.<jobs collection>``: what a channel's publishers and listeners agree on, with no I/O."""
    model = store.model
    return f"{model._get_db().name}.{model._get_collection_name()}"


class _AnyListening:
    def __init__(self, wakers: Sequence[Waker]) -> None:
        self._wakers = wakers

    def is_set(self) -> bool:
        return any(waker.listening.is_set() for waker in self._wakers)


class Wakers:
    """Several wakers as one: each in a thread of its own, closed together; listening while any listens."""

    def __init__(self, wakers: Sequence[Waker], stopping: threading.Event, name: str = "wakeup") -> None:
        self.wakers = list(wakers)
        self.stopping = stopping
        self.name = name
        self.listening: Flag = _AnyListening(self.wakers)

    def run(self) -> None:
        threads = [
            threading.Thread(target=waker.run, name=f"{threading.current_thread().name}-{i}", daemon=True)
            for i, waker in enumerate(self.wakers[1:], 1)
        ]
        for thread in threads:
            thread.start()
        try:
            self.wakers[0].run()
        finally:
            self.stopping.wait()  # the first may end early (no change streams): the others listen on
            for thread in threads:
                thread.join(1.0)

    def close(self) -> None:
        for waker in self.wakers:
            waker.close()


class ChangeStreamWaker:
    """Runs in its own daemon thread and calls ``wake()`` for each claimable job."""

    def __init__(
        self,
        store: JobStore,
        types: Sequence[str],
        queues: Sequence[str],
        wake: Callable[[], None],
        stopping: threading.Event,
        *,
        max_await_ms: int,
        idle: Optional[threading.Event] = None,
        logger: Optional[logging.Logger] = None,
        lease_ms: Optional[int] = None,
    ) -> None:
        self.store = store
        self.types = list(types)
        self.queues = list(queues)
        self.wake = wake
        self.stopping = stopping
        self.max_await_ms = max_await_ms
        self.lease_ms = lease_ms
        self.idle = idle
        self.log = logger or log
        self.supported: Optional[bool] = None
        self.state = new_stream_state(stopping)
        #: Set while a change stream is open and delivering events.
        self.listening = self.state.listening
        self._whole_db = True
        self._lock = threading.Lock()
        self._stream: Optional[Any] = None

    def close(self) -> None:
        """End the current read from another thread (the stopping one); ``stopping`` must be set first."""
        self.state.short_lease_claimed.set()  # the maintenance loop may wait on it: it sees the stop now
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:
                self.log.debug("closing the change stream failed", exc_info=True)

    def run(self) -> None:
        resume: Optional[Any] = None
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                with self._open(resume) as stream:
                    with self._lock:
                        if self.stopping.is_set():
                            return
                        self._stream = stream
                    if not self.supported:
                        self.supported = True
                        self.log.debug("watching for new jobs with a change stream")
                    self.state.vouched_errors = self.store.transient_errors
                    self.listening.set()
                    # What changed before the stream opened it cannot tell (a stream reopened from "now"
                    # after its history was lost): the poller reads the pause state and claims once more.
                    self.state.pause_changed.set()
                    self.wake()  # the poller may sleep by the poll backoff: from now on it sleeps by the stream
                    backoff = 0.5
                    while not self.stopping.is_set() and stream.alive:
                        if self.idle is not None and not self.idle.is_set():
                            # The poller is busy and will find new work itself: read
                            # nothing now; the open cursor keeps our place.
                            self.idle.wait(0.5)
                            continue
                        errors = self.store.transient_errors
                        change = stream.try_next()
                        self.state.vouched_errors = errors  # the read came back: its connection is alive
                        resume = stream.resume_token
                        if change is not None:
                            self._tell(change)
            except OperationFailure as exc:
                self.listening.clear()
                if self.stopping.is_set():
                    return
                if exc.code in _UNSUPPORTED:
                    self.supported = False
                    self.log.info("change streams unavailable (%s); polling only", exc)
                    return
                if exc.code in _UNAUTHORIZED and self._whole_db:
                    self._whole_db = False
                    self.state.watches_pause = False
                    self.log.info("not allowed to watch the database (%s); watching the jobs collection only", exc)
                    continue
                if exc.code in _HISTORY_LOST:
                    resume = None
                self._pause(exc, backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # noqa: BLE001 - network errors, or a stream closed under a read
                self.listening.clear()
                if self.stopping.is_set():
                    return
                self._pause(exc, backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                with self._lock:
                    self._stream = None
            self.listening.clear()
            # The stream may have missed inserts, and pause changes, while it was down.
            self.state.pause_changed.set()
            self.wake()

    def _tell(self, change: Mapping[str, Any]) -> None:
        """Who an event is for: a claim of a short lease for the lease sweep, anything else for the poller."""
        if (change.get("ns") or {}).get("coll") == self._control_name:
            self.state.pause_changed.set()
        fields = (change.get("updateDescription") or {}).get("updatedFields") or {}
        if fields.get("status") == PROCESSING:
            self.state.short_lease_claimed.set()
            return
        self.wake()

    @property
    def _control_name(self) -> str:
        return self.store.control.collection.name

    def _open(self, resume: Optional[Mapping[str, Any]]) -> BoundedChangeStream:
        """The stream: of the whole database (the jobs and the pause document), else of the jobs collection."""
        if not self._whole_db:
            return self.store.jobs.watch_new_jobs(
                self.types, self.queues, resume_after=resume, max_await_ms=self.max_await_ms
            )
        jobs = {
            "$or": [
                {
                    "operationType": "insert",
                    "fullDocument.status": PENDING,
                    "fullDocument.queue": {"$in": self.queues},
                    "fullDocument.type": {"$in": self.types},
                },
                {"operationType": "update", "updateDescription.updatedFields.status": PENDING},
                # A pending job's due time moved (a batch's staged jobs released, an operator's "run now").
                {"operationType": "update", "updateDescription.updatedFields.run_at": {"$exists": True}},
            ]
        }
        branches: list[dict[str, Any]] = [
            {"ns.coll": self.store.collection.name, **jobs},
            {"ns.coll": self._control_name, "documentKey._id": PAUSE_ID},
        ]
        if self.lease_ms is not None:
            # A claim whose lease is shorter than this worker's: an idle sweep that waits a lease of
            # its own plus the sweep interval would rescue it late (worker/maintenance.py).
            lease_left = {
                "$subtract": ["$updateDescription.updatedFields.lease_expires_at", {"$toDate": "$clusterTime"}]
            }
            branches.append(
                {
                    "ns.coll": self.store.collection.name,
                    "operationType": "update",
                    "updateDescription.updatedFields.status": PROCESSING,
                    "$expr": {"$lt": [lease_left, self.lease_ms]},
                }
            )
        match = {"$or": branches}
        store = self.store
        with store.bounded():
            stream = store.collection.database.watch(
                [{"$match": match}], resume_after=resume, max_await_time_ms=self.max_await_ms
            )
        self.state.watches_pause = True
        return BoundedChangeStream(stream, store.bounded, self.max_await_ms)

    def _pause(self, exc: BaseException, seconds: float) -> None:
        self.log.warning("change stream interrupted (%r); reopening in %.1fs, polling meanwhile", exc, seconds)
        self.stopping.wait(seconds)
