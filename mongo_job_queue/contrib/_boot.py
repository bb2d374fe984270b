"""What the Flask and Django integrations share: building the queue and starting it safely.

Framework-free on purpose: both integrations decide *whether* this process
may start a worker (their own rules), then hand the decision to
:class:`WorkerStarter`, which starts it at most once per process, stops it
at exit, and says in the log what it did and why.

Threads do not survive ``fork()``, so a worker must never start in a process
that forks the serving processes afterwards (a gunicorn ``--preload`` master,
uWSGI without ``lazy-apps``), nor in a reloader's watcher process that never
serves (:mod:`._servers` tells a gunicorn master from its workers). When a
process cannot tell, the worker starts lazily, at the first request:
pre-fork masters and reloader watchers never handle one.

An automatic start never fails or delays boot or a request: one background
thread per process makes it, and retries it with backoff while MongoDB is
unreachable or the process has no handler yet.
"""

from __future__ import annotations

import atexit
import enum
import importlib
import logging
import math
import os
import random
import signal
import threading
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from types import FrameType
from typing import Any, Optional

import mongoengine

from ..after_fork import renew_in_child
from ..errors import ConfigError
from ..model import BaseJob
from ..queue import PersistentJobQueue, create_job_queue

__all__ = [
    "Start",
    "StartDecision",
    "WorkerStarter",
    "build_queue",
    "exit_on_sigterm",
    "import_object",
    "stop_timeout_setting",
]

log = logging.getLogger(__name__)


class Start(str, enum.Enum):
    """When the worker of this process starts."""

    NOW = "now"
    LAZY = "lazy"  # at this process's first request
    NEVER = "never"


@dataclass(frozen=True)
class StartDecision:
    """A :class:`Start` and the reason, which go into the log; ``then`` says what happens later (LAZY)."""

    when: Start
    reason: str
    then: str = "it starts at this process's first request"
    #: A development server that SIGTERM would kill outright: make it exit as on Ctrl-C, so the worker stops.
    exit_on_sigterm: bool = False


def import_object(spec: Any, what: str) -> Any:
    """Resolve ``package.module:attr`` or ``package.module.attr``; other values pass through.

    Raises:
        ConfigError: the module or the attribute cannot be found.
    """
    if not isinstance(spec, str):
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{what} must be 'package.module:Name', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} {spec!r} cannot be imported: {exc}") from exc
    return obj


def stop_timeout_setting(value: Any, name: str) -> float:
    """A ``STOP_TIMEOUT`` setting as seconds: a number >= 0, ``math.inf`` or None (wait as long as jobs take).

    Raises:
        ConfigError: anything else, NaN included.
    """
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ConfigError(f"{name} must be a number >= 0, math.inf or None (no limit), got {value!r}")
    return float(value)


def build_queue(
    model: Any,
    *,
    config: Optional[Mapping[str, Any]],
    mongodb_uri: Optional[str],
    mongodb_db: Optional[str] = None,
    logger: Optional[logging.Logger] = None,
    setting_name: str = "{}",
) -> PersistentJobQueue[Any]:
    """The queue of an integration: the job model, its config and, if given, its connection.

    ``mongodb_uri`` only *registers* the model's connection alias: MongoEngine
    connects at the first query, so no ``MongoClient`` exists yet in a process
    that is about to fork (and the queue drops an inherited one anyway).
    ``mongodb_db`` names the database when the URI does not.
    ``setting_name`` formats a key (``"MONGODB_URI"``) as the framework's setting, for the error messages.

    Raises:
        ConfigError: the model is not a job model, the URI or the database name is neither a string nor None,
            or the config is invalid.
    """
    for key, value in (("MONGODB_URI", mongodb_uri), ("MONGODB_DB", mongodb_db)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{setting_name.format(key)} must be a string or None, got {value!r}")
    job_model = import_object(model, "the job model")
    if not isinstance(job_model, type) or not issubclass(job_model, BaseJob):
        raise ConfigError(f"the job model must be a BaseJob subclass, got {job_model!r}")
    if mongodb_uri:
        alias = job_model._meta.get("db_alias") or mongoengine.DEFAULT_CONNECTION_NAME
        options: dict[str, Any] = {"db": mongodb_db} if mongodb_db else {}
        mongoengine.register_connection(alias, host=mongodb_uri, uuidRepresentation="standard", **options)
    return create_job_queue(job_model=job_model, config=config, logger=logger)


@dataclass(eq=False)
class WorkerStarter:
    """Starts one queue's worker at most once per process, and stops it at exit.

    The automatic starts (at boot, at the first request) never raise and
    never block: they hand the start to one background thread per process,
    which retries it with backoff until it succeeds. A web app must keep
    answering while MongoDB is unreachable or the process has no handler,
    and a request must not wait out server selection. ``queue.running`` is
    False until the worker has really started; :attr:`last_error` says why not.

    Args:
        queue: The queue whose worker to run.
        stop_timeout: Seconds running jobs get when the process exits (``math.inf``:
            as long as they take); the ones still running then go back to the queue.
        name: How the log names the integration (``"Flask app 'shop'"``).
        retry_min_s: First delay between two failed background starts; it doubles each time.
        retry_max_s: Longest delay between two failed background starts.
    """

    queue: PersistentJobQueue[Any]
    _: KW_ONLY
    stop_timeout: float
    name: str
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    #: The error of the latest failed background start, None once it started.
    last_error: Optional[BaseException] = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._started_pid: Optional[int] = None
        self._lazy = False
        self._exit_registered = False
        self._after_fork_in_child()
        renew_in_child(self)

    def _after_fork_in_child(self) -> None:
        # Fresh in a forked child: a lock held by a parent thread at fork() time would never be released there,
        # and the parent's retry thread did not survive the fork.
        self._start_lock = threading.Lock()  # held while start_polling() runs, by one starter at a time
        self._arm_lock = threading.Lock()  # held only to decide whether to spawn the retry thread
        self._closed = threading.Event()
        self._retrying_pid: Optional[int] = None

    def apply(self, decision: StartDecision) -> None:
        """Start now (in the background), arm the lazy start, or only log why not."""
        if decision.when is Start.NOW:
            log.info("%s: starting the job worker in process %d (%s)", self.name, os.getpid(), decision.reason)
            if decision.exit_on_sigterm:
                exit_on_sigterm(self.name)
            self.start_in_background(decision.reason)
        elif decision.when is Start.LAZY:
            self._lazy = True
            log.info(
                "%s: not starting the job worker in process %d at boot (%s); %s",
                self.name,
                os.getpid(),
                decision.reason,
                decision.then,
            )
        else:
            log.info("%s: not starting the job worker in process %d: %s", self.name, os.getpid(), decision.reason)

    def start(self, reason: str = "started explicitly") -> bool:
        """Start the worker in this process now unless it already runs here; True if this call started it.

        Blocks while the queue reaches the database, and raises what
        :meth:`~mongo_job_queue.PersistentJobQueue.start_polling` raises.
        """
        with self._start_lock:
            if self._started_pid == os.getpid() and self.queue.running:
                return False
            self.queue.start_polling()
            if not self._exit_registered:
                atexit.register(self._stop_at_exit)
                self._exit_registered = True
            self._started_pid = os.getpid()
            self.last_error = None
        log.info("%s: job worker started in process %d (%s)", self.name, os.getpid(), reason)
        return True

    def start_in_background(self, reason: str) -> None:
        """Start from this process's one retry thread, with backoff until it runs; returns at once, never raises."""
        pid = os.getpid()
        if self._started_pid == pid and self.queue.running:
            return
        with self._arm_lock:
            if self._retrying_pid == pid:
                return  # already trying
            self._retrying_pid = pid
        try:
            threading.Thread(
                target=self._retry_until_started, args=(reason, pid), name="mjq-autostart", daemon=True
            ).start()
        except Exception:  # e.g. "can't start new thread": the next request tries again
            self._retrying_pid = None
            log.exception("%s: could not start the job worker's starter thread in process %d", self.name, pid)

    def stop_retrying(self) -> None:
        """End this process's background start attempts (at exit, in tests); a running worker is untouched."""
        self._closed.set()

    @property
    def retrying(self) -> bool:
        """Whether a background start is under way in this process."""
        return self._retrying_pid == os.getpid()

    def on_request(self) -> None:
        """The lazy start: called before each request; it never waits, fails or touches the database."""
        if self._lazy and self._started_pid != os.getpid() and self._retrying_pid != os.getpid():
            self.start_in_background("first request of this process")

    def _retry_until_started(self, reason: str, pid: int) -> None:
        delay = self.retry_min_s
        failures = 0
        try:
            while not self._closed.is_set():
                try:
                    self.start(reason)
                    if failures:
                        log.info("%s: the job worker started after %d failed attempt(s)", self.name, failures)
                    if self._closed.is_set():
                        # Shut down while start_polling ran: the exit handler found no worker to stop.
                        log.info("%s: process %d shut down during the start; stopping the worker", self.name, pid)
                        self.queue.stop(self.stop_timeout, requeue_running=True)
                    return
                except Exception as exc:  # logged and retried: a web app must keep serving
                    failures += 1
                    self.last_error = exc
                    wait = random.uniform(delay / 2, delay)
                    if failures == 1:
                        log.exception(
                            "%s: the job worker could not start in process %d; retrying in the background, "
                            "requests are served meanwhile",
                            self.name,
                            pid,
                        )
                    else:
                        log.warning(
                            "%s: the job worker could not start in process %d (attempt %d): %r; next try in %.1fs",
                            self.name,
                            pid,
                            failures,
                            exc,
                            wait,
                        )
                if self._closed.wait(wait):
                    return
                delay = min(delay * 2, self.retry_max_s)
        finally:
            with self._arm_lock:
                if self._retrying_pid == pid:
                    self._retrying_pid = None

    def _stop_at_exit(self) -> None:
        self._closed.set()
        if self._started_pid == os.getpid() and self.queue.running:
            # The process is exiting: running jobs that do not finish in time go back to the queue.
            self.queue.stop(self.stop_timeout, requeue_running=True)


def exit_on_sigterm(name: str) -> bool:
    """Make SIGTERM end this process as Ctrl-C does, if it would kill it outright; True if installed.

    A development server (``flask run``, ``runserver --noreload``) leaves
    SIGTERM at its default, which kills the process without running
    ``atexit``: the worker's running jobs would wait out their lease. Raising
    ``KeyboardInterrupt`` in the main thread ends the server as Ctrl-C does,
    and the exit handler stops the worker gracefully. A second SIGTERM kills
    at once. A handler someone installed is left alone, as is any thread
    but the main one (only it may install handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _interrupt)
    log.debug("%s: SIGTERM now stops process %d as Ctrl-C does", name, os.getpid())
    return True


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    log.warning("SIGTERM: stopping as on Ctrl-C; the job worker stops at exit (send it again to kill)")
    raise KeyboardInterrupt
