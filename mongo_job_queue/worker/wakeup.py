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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Optional

from pymongo.errors import OperationFailure

from ..store import JobStore

__all__ = ["ChangeStreamWaker"]

log = logging.getLogger(__name__)

# The server cannot run change streams at all (standalone mongod, or a test
# server without them): fall back to polling for good.
_UNSUPPORTED = frozenset({40573, 115, 59})
# The resume token is too old or invalid: start again from now.
_HISTORY_LOST = frozenset({286, 280, 260})


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
