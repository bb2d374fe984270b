"""The threads of a worker's starts: this start's by role, and every one still running, for a stop to wait for.

A poller still inside a claim after a timed-out stop outlives its start:
a later stop must still wait for it and report it, so every thread any
start began is remembered until it has ended (:meth:`WorkerThreads.track`).
A handler thread abandoned to its time limit is replaced (:mod:`.pool`);
the stop then waits for the new one, never the old
(:meth:`WorkerThreads.replaced`).
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from .timeouts import deadline_after, join, remaining

__all__ = ["WorkerThreads"]


class WorkerThreads:
    """Owned by one :class:`~mongo_job_queue.worker.Worker`; ``lock`` is the worker's, which guards its starts."""

    def __init__(self, lock: threading.Lock, log: logging.Logger) -> None:
        self._lock = lock
        self.log = log
        self.handlers: list[threading.Thread] = []
        self.poller: Optional[threading.Thread] = None
        self.maintenance: Optional[threading.Thread] = None
        self.waker: Optional[threading.Thread] = None
        self.scheduler: Optional[threading.Thread] = None
        #: Every thread any start began, until it has ended.
        self.started: list[threading.Thread] = []

    def alive_for_work(self) -> bool:
        """Whether this start's poller and handler threads all run."""
        return all(t is not None and t.is_alive() for t in [self.poller, *self.handlers])

    def replaced(self, old: threading.Thread, new: threading.Thread) -> None:
        """A handler thread abandoned to a time limit was replaced: a stop waits for the new one, never the old."""
        with self._lock:
            self.started = [new if t is old else t for t in self.started]

    def track(self, threads: list[threading.Thread]) -> None:
        """Remember threads about to start; forget the ones that have ended."""
        self.started = [t for t in self.started if t.is_alive()] + threads

    def join(
        self, deadline: float, finished: bool, force: Optional[threading.Event], heartbeat: Optional[threading.Thread]
    ) -> None:
        """Wait for the services of a stop: within ``deadline`` if every job ``finished``, else a short grace."""
        grace = deadline_after(max(1.0, remaining(deadline)) if finished else 0.5)
        for thread in (self.maintenance, self.waker, self.scheduler):
            if thread is not None:
                join(thread, grace)
        # Any thread of an earlier start (e.g. its poller, still inside a claim
        # when that start's stop timed out): waited for like this start's
        # poller, the force included.
        current = {*self.handlers, self.poller}
        for thread in self.started:
            if thread not in current:
                join(thread, grace, force)
        if finished:
            for thread in self.handlers:
                join(thread, grace)
            if heartbeat is not None:
                join(heartbeat, grace)

    def alive(self, heartbeat: Optional[threading.Thread]) -> list[threading.Thread]:
        """Threads still running: of any start so far, and the heartbeat."""
        return [t for t in [*self.started, heartbeat] if t is not None and t.is_alive()]
