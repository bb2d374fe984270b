"""Running a worker in the foreground of a dedicated process, with signals.

This is what a worker process's main function calls (the CLI, a Django
management command, a container's entry point). The first SIGTERM or SIGINT
stops claiming and lets running jobs finish for ``stop_timeout`` seconds;
jobs still running then go back to the queue with the attempt recorded,
because the process is about to exit and their threads with it. A second
signal skips the wait. This follows RQ's and Celery's warm/cold shutdown.
``stop_timeout`` may be ``None`` or ``math.inf``: wait for running jobs forever.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Optional, Protocol

__all__ = ["EXIT_FORCED", "EXIT_OK", "RunnableQueue", "run_worker"]

log = logging.getLogger(__name__)

#: Stopped after the first signal (or ``until`` became true).
EXIT_OK = 0
#: Stopped by a second signal, without waiting for running jobs.
EXIT_FORCED = 1

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunnableQueue(Protocol):
    """What running a worker needs of a :class:`~mongo_job_queue.PersistentJobQueue` (which imports this module)."""

    def start_polling(self) -> None: ...

    def stop(self, timeout: Optional[float], *, requeue_running: bool, force: Optional[threading.Event]) -> bool: ...


def run_worker(
    queue: RunnableQueue,
    *,
    stop_timeout: Optional[float] = 30.0,
    install_signal_handlers: bool = True,
    until: Optional[Callable[[], bool]] = None,
    check_interval: float = 0.5,
) -> int:
    """Start polling and block until a signal (or ``until()``); return an exit code.

    Args:
        queue: The queue whose worker to run.
        stop_timeout: Seconds running jobs get to finish after the first signal;
            ``None`` or ``math.inf`` waits until they do (a second signal still forces).
        install_signal_handlers: Handle SIGTERM/SIGINT (main thread only).
        until: Optional predicate checked every ``check_interval`` seconds;
            when it returns True the worker stops as on a first signal.
        check_interval: Seconds between checks of ``until``.

    Returns:
        :data:`EXIT_OK` after a graceful stop, :data:`EXIT_FORCED` after a second signal.
    """
    stop_requested = threading.Event()
    force = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            log.warning("%s again: stopping now, returning running jobs to the queue", name)
            force.set()
        else:
            forever = stop_timeout is None or math.isinf(stop_timeout)
            limit = "no time limit" if forever else f"up to {stop_timeout:.0f}s"
            log.warning("%s: finishing running jobs (%s), then exiting; send it again to force", name, limit)
            stop_requested.set()

    previous: dict[int, Any] = {}
    if install_signal_handlers:
        previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}
    try:
        queue.start_polling()
        while not stop_requested.wait(check_interval):
            if until is not None and until():
                stop_requested.set()
        queue.stop(stop_timeout, requeue_running=True, force=force)
        return EXIT_FORCED if force.is_set() else EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
