"""What the Flask and Django integrations share: building the queue and starting it safely.

Framework-free on purpose: both integrations decide *whether* this process
may start a worker (their own rules), then hand the decision to
:class:`WorkerStarter`, which starts it at most once per process, stops it
at exit, and says in the log what it did and why.

Threads do not survive ``fork()``, so a worker must never start in a process
that forks the serving processes afterwards (a gunicorn ``--preload`` master,
uWSGI without ``lazy-apps``), nor in a reloader's watcher process that never
serves. When a process cannot tell, the worker starts lazily, at the first
request: pre-fork masters and reloader watchers never handle one.
"""

from __future__ import annotations

import atexit
import enum
import importlib
import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import mongoengine

from ..errors import ConfigError
from ..model import BaseJob
from ..queue import PersistentJobQueue, create_job_queue

__all__ = ["Start", "StartDecision", "WorkerStarter", "build_queue", "import_object", "prefork_server"]

log = logging.getLogger(__name__)


class Start(str, enum.Enum):
    """When the worker of this process starts."""

    NOW = "now"
    LAZY = "lazy"  # at this process's first request
    NEVER = "never"


@dataclass(frozen=True)
class StartDecision:
    """A :class:`Start` and the reason, which goes into the log."""

    when: Start
    reason: str


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


def build_queue(
    model: Any,
    *,
    config: Optional[Mapping[str, Any]],
    mongodb_uri: Optional[str],
    mongodb_db: Optional[str] = None,
    logger: Optional[logging.Logger] = None,
) -> PersistentJobQueue[Any]:
    """The queue of an integration: the job model, its config and, if given, its connection.

    ``mongodb_uri`` only *registers* the model's connection alias: MongoEngine
    connects at the first query, so no ``MongoClient`` exists yet in a process
    that is about to fork (and the queue drops an inherited one anyway).
    ``mongodb_db`` names the database when the URI does not.
    """
    job_model = import_object(model, "the job model")
    if not isinstance(job_model, type) or not issubclass(job_model, BaseJob):
        raise ConfigError(f"the job model must be a BaseJob subclass, got {job_model!r}")
    if mongodb_uri:
        alias = job_model._meta.get("db_alias") or mongoengine.DEFAULT_CONNECTION_NAME
        options: dict[str, Any] = {"db": mongodb_db} if mongodb_db else {}
        mongoengine.register_connection(alias, host=mongodb_uri, uuidRepresentation="standard", **options)
    return create_job_queue(job_model=job_model, config=config, logger=logger)


def prefork_server() -> Optional[str]:
    """The pre-forking server this process runs under, if one is recognised.

    Such a server may import the app in its master before forking the
    workers (gunicorn ``--preload``, uWSGI without ``lazy-apps``), and at
    import time a worker cannot be told from that master.
    """
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        return "gunicorn"
    if "uwsgi" in sys.modules:
        return "uWSGI"
    return None


class WorkerStarter:
    """Starts one queue's worker at most once per process, and stops it at exit.

    Args:
        queue: The queue whose worker to run.
        stop_timeout: Seconds running jobs get when the process exits; the
            ones still running then go back to the queue (attempt counted).
        name: How the log names the integration (``"Flask app 'shop'"``).
    """

    def __init__(self, queue: PersistentJobQueue[Any], *, stop_timeout: float, name: str) -> None:
        self.queue = queue
        self.stop_timeout = stop_timeout
        self.name = name
        self._lock = threading.Lock()
        self._started_pid: Optional[int] = None
        self._lazy = False

    def apply(self, decision: StartDecision) -> None:
        """Start now, arm the lazy start, or only log why not."""
        if decision.when is Start.NOW:
            self.start(decision.reason)
        elif decision.when is Start.LAZY:
            self._lazy = True
            log.info(
                "%s: not starting the job worker in process %d at boot (%s); it starts at this process's first request",
                self.name,
                os.getpid(),
                decision.reason,
            )
        else:
            log.info("%s: not starting the job worker in process %d: %s", self.name, os.getpid(), decision.reason)

    def start(self, reason: str = "started explicitly") -> bool:
        """Start the worker in this process unless it already runs here; True if this call started it."""
        with self._lock:
            if self._started_pid == os.getpid() and self.queue.running:
                return False
            self.queue.start_polling()
            if self._started_pid is None:
                atexit.register(self._stop_at_exit)
            self._started_pid = os.getpid()
        log.info("%s: job worker started in process %d (%s)", self.name, os.getpid(), reason)
        return True

    def start_in_background(self, reason: str) -> None:
        """Start from a short-lived thread, for hooks that must not touch the database (Django's ``ready()``)."""

        def run() -> None:
            try:
                self.start(reason)
            except Exception:
                log.exception("%s: the job worker could not start in process %d", self.name, os.getpid())

        threading.Thread(target=run, name="mjq-autostart", daemon=True).start()

    def on_request(self) -> None:
        """The lazy start: called before each request, cheap once the worker runs here."""
        if self._lazy and self._started_pid != os.getpid():
            self.start("first request of this process")

    def _stop_at_exit(self) -> None:
        if self._started_pid == os.getpid() and self.queue.running:
            # The process is exiting: running jobs that do not finish in time go back to the queue.
            self.queue.worker.stop(self.stop_timeout, requeue_running=True)
