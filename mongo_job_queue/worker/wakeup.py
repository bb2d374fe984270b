"""Change-stream wake-ups: an idle worker hears about new jobs at once.

Polling with backoff keeps an idle worker cheap but slow to notice work:
after a few empty polls it waits ``poll_interval_max_ms``. On a replica set
the worker also watches its collection for jobs it can run and wakes the
poller the moment one is inserted, so pickup latency is a round trip rather
than half a poll interval. Polling stays on, as the fallback for delayed jobs
coming due, for standalone servers (no change streams) and while the stream
is broken. A broken stream resumes from its last token; when the server no
longer has that history, it restarts from now (polling covers the gap).

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
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol

from pymongo.errors import OperationFailure

from ..store import JobStore

__all__ = ["ChangeStreamWaker", "Waker", "Wakers", "WakeupChannel", "namespace_of"]

log = logging.getLogger(__name__)

# The server cannot run change streams at all (standalone mongod, or a test
# server without them): fall back to polling for good.
_UNSUPPORTED = frozenset({40573, 115, 59})
# The resume token is too old or invalid: start again from now.
_HISTORY_LOST = frozenset({286, 280, 260})


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
    ) -> None:
        self.store = store
        self.types = list(types)
        self.queues = list(queues)
        self.wake = wake
        self.stopping = stopping
        self.max_await_ms = max_await_ms
        self.idle = idle
        self.log = logger or log
        self.supported: Optional[bool] = None
        #: Set while a change stream is open and delivering events.
        self.listening = threading.Event()
        self._lock = threading.Lock()
        self._stream: Optional[Any] = None

    def close(self) -> None:
        """End the current read from another thread (the stopping one); ``stopping`` must be set first."""
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
                with self.store.jobs.watch_new_jobs(
                    self.types, self.queues, resume_after=resume, max_await_ms=self.max_await_ms
                ) as stream:
                    with self._lock:
                        if self.stopping.is_set():
                            return
                        self._stream = stream
                    if not self.supported:
                        self.supported = True
                        self.log.debug("watching for new jobs with a change stream")
                    self.listening.set()
                    backoff = 0.5
                    while not self.stopping.is_set() and stream.alive:
                        if self.idle is not None and not self.idle.is_set():
                            # The poller is busy and will find new work itself: read
                            # nothing now; the open cursor keeps our place.
                            self.idle.wait(0.5)
                            continue
                        change = stream.try_next()
                        resume = stream.resume_token
                        if change is not None:
                            self.wake()
            except OperationFailure as exc:
                self.listening.clear()
                if self.stopping.is_set():
                    return
                if exc.code in _UNSUPPORTED:
                    self.supported = False
                    self.log.info("change streams unavailable (%s); polling only", exc)
                    return
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
            # The stream may have missed inserts while it was down.
            self.wake()

    def _pause(self, exc: BaseException, seconds: float) -> None:
        self.log.warning("change stream interrupted (%r); reopening in %.1fs, polling meanwhile", exc, seconds)
        self.stopping.wait(seconds)
