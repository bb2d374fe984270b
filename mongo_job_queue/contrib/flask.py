"""Flask integration: the ``MongoJobQueue`` extension and ``flask mongo-job-queue``.

::

    jobs = MongoJobQueue(job_model=Job)

    @jobs.handler("send_email")
    def send_email(job):
        ...

    def create_app():
        app = Flask(__name__)
        app.config["MONGO_JOB_QUEUE_START_WORKER"] = True
        jobs.init_app(app)
        return app

Settings, all under ``MONGO_JOB_QUEUE_``, are read once by ``init_app``;
unknown ones are an error, so a typo fails at boot:

``MONGO_JOB_QUEUE_MODEL``
    The job model, a class or ``"package.module:Job"``, unless given to the
    constructor.
``MONGO_JOB_QUEUE_MONGODB_URI``
    Registers the model's connection alias with this URI. Leave it unset if
    the app connects MongoEngine itself.
``MONGO_JOB_QUEUE_MONGODB_DB``
    The database name, when the URI names none.
``MONGO_JOB_QUEUE_CONFIG``
    A dict of :class:`~mongo_job_queue.QueueConfig` keys.
``MONGO_JOB_QUEUE_START_WORKER``
    ``True`` to run a worker in each serving process (default ``False``).
``MONGO_JOB_QUEUE_STOP_TIMEOUT``
    Seconds running jobs get when the process exits (default 30;
    ``math.inf`` or None: as long as they take).

Starting the worker is never inferred: only ``START_WORKER`` asks for it.
It then starts once per serving process, and the log says where it declines:
not under ``TESTING``, not in other ``flask`` CLI commands (other click
programs, such as uvicorn, are servers like any other), not in the debug
reloader's watcher process, and, under gunicorn or uWSGI, whose master may
import the app before it forks (``--preload``), only at each worker's first
request. Call :meth:`MongoJobQueue.start_worker` from gunicorn's
``post_fork`` hook to start it at boot there.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import click
from flask import Flask, current_app, has_app_context
from flask.cli import ScriptInfo, with_appcontext

from .. import cli
from ..errors import ConfigError, QueueStateError
from ..forwarding import parameters_of
from ..handlers import HandlerFn
from ..queue import PersistentJobQueue
from ..schedules.arguments import schedule_arguments, split_handler_options
from ._boot import Start, StartDecision, WorkerStarter, build_queue, stop_timeout_setting
from ._servers import prefork_decision

__all__ = ["EXTENSION_KEY", "MongoJobQueue", "app_queue", "decide_start"]

log = logging.getLogger(__name__)

#: The key of this extension's state in ``app.extensions``.
EXTENSION_KEY = "mongo_job_queue"
PREFIX = "MONGO_JOB_QUEUE_"
_SETTINGS = frozenset({"MODEL", "MONGODB_URI", "MONGODB_DB", "CONFIG", "START_WORKER", "STOP_TIMEOUT"})


@dataclass
class _AppState:
    queue: PersistentJobQueue[Any]
    starter: WorkerStarter


class MongoJobQueue:
    """The Flask extension: one queue per app, handlers registered on all of them.

    Args:
        app: Initialise this app at once (or call :meth:`init_app` later).
        job_model: The app's :class:`~mongo_job_queue.BaseJob` subclass, or
            ``"package.module:Job"``; else ``MONGO_JOB_QUEUE_MODEL``.
        logger: Logger of the queue's events.
    """

    def __init__(
        self, app: Optional[Flask] = None, *, job_model: Any = None, logger: Optional[logging.Logger] = None
    ) -> None:
        self.job_model = job_model
        self.logger = logger
        self._handlers: list[tuple[str, HandlerFn, dict[str, Any]]] = []
        self._schedules: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    # -- setup ----------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Build the app's queue from its settings, register handlers and the CLI, maybe start the worker.

        Raises:
            QueueStateError: the extension is already initialised on this app.
            ConfigError: an unknown ``MONGO_JOB_QUEUE_*`` setting or an invalid value.
        """
        if EXTENSION_KEY in app.extensions:
            raise QueueStateError(f"mongo-job-queue is already initialised on Flask app {app.name!r}")
        settings = _settings(app.config)
        model = self.job_model if self.job_model is not None else settings.get("MODEL")
        if model is None:
            raise ConfigError("set MONGO_JOB_QUEUE_MODEL or pass job_model= to MongoJobQueue()")
        stop_timeout = stop_timeout_setting(settings.get("STOP_TIMEOUT", 30.0), "MONGO_JOB_QUEUE_STOP_TIMEOUT")
        start_worker = settings.get("START_WORKER", False)
        if not isinstance(start_worker, bool):
            raise ConfigError(f"MONGO_JOB_QUEUE_START_WORKER must be True or False, got {start_worker!r}")
        queue = build_queue(
            model,
            config=settings.get("CONFIG"),
            mongodb_uri=settings.get("MONGODB_URI"),
            mongodb_db=settings.get("MONGODB_DB"),
            logger=self.logger,
            setting_name=PREFIX + "{}",
        )
        for job_type, fn, options in self._handlers:
            queue.register_handler(job_type, _in_app_context(app, fn), **options)
        for name, args, options in self._schedules:
            queue.schedule(name, *args, **options)
        starter = WorkerStarter(queue, stop_timeout=stop_timeout, name=f"Flask app {app.name!r}")
        app.extensions[EXTENSION_KEY] = _AppState(queue, starter)
        self._apps.add(app)
        app.cli.add_command(_command)
        app.before_request(starter.on_request)
        starter.apply(decide_start(app, start_worker))

    # -- handlers -------------------------------------------------------------

    def register_handler(self, job_type: str, fn: HandlerFn, **options: Any) -> HandlerFn:
        """Register ``fn`` for ``job_type`` on every app's queue, now and at later ``init_app`` calls.

        ``options`` are those of :meth:`~mongo_job_queue.PersistentJobQueue.register_handler`.
        The handler runs inside the app's application context.
        """
        for app in list(self._apps):
            app.extensions[EXTENSION_KEY].queue.register_handler(job_type, _in_app_context(app, fn), **options)
        self._handlers.append((job_type, fn, options))
        return fn

    def handler(self, job_type: str, **options: Any) -> Callable[[HandlerFn], HandlerFn]:
        """Decorator form of :meth:`register_handler`."""

        def decorate(fn: HandlerFn) -> HandlerFn:
            return self.register_handler(job_type, fn, **options)

        return decorate

    @parameters_of(schedule_arguments)
    def schedule(self, name: str, *args: Any, **options: Any) -> None:
        """:meth:`~mongo_job_queue.PersistentJobQueue.schedule` on every app's queue, now and at later ``init_app``.

        Each app's worker fires it; a definition that the queue rejects
        raises here for apps already initialised, else at ``init_app``.
        """
        self._schedule(name, args, options)

    def _schedule(self, name: str, args: tuple[Any, ...], options: dict[str, Any]) -> None:
        for app in list(self._apps):
            app.extensions[EXTENSION_KEY].queue.schedule(name, *args, **options)
        self._schedules.append((name, args, options))

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name`` from every app's queue and from later ``init_app`` calls."""
        removed = [app.extensions[EXTENSION_KEY].queue.unschedule(name) for app in list(self._apps)]
        before = len(self._schedules)
        self._schedules = [schedule for schedule in self._schedules if schedule[0] != name]
        return any(removed) or len(self._schedules) < before

    @parameters_of(schedule_arguments)
    def periodic(self, name: str, *args: Any, **options: Any) -> Callable[[HandlerFn], HandlerFn]:
        """:meth:`~mongo_job_queue.PersistentJobQueue.periodic` on every app's queue, now and at later ``init_app``.

        The handler of ``job_type`` (default: ``name``) runs inside the app's application context.
        """
        schedule_options, handler_options = split_handler_options(options)

        def decorate(fn: HandlerFn) -> HandlerFn:
            given = schedule_arguments(name, *args, **schedule_options).job_type  # a keyword or the third argument
            jt = name if given is None else given
            self._schedule(name, args, schedule_options if given is not None else {**schedule_options, "job_type": jt})
            try:
                self.register_handler(jt, fn, **handler_options)
            except BaseException:
                self.unschedule(name)  # all or nothing, as PersistentJobQueue.periodic
                raise
            return fn

        return decorate

    # -- use ------------------------------------------------------------------

    def get_queue(self, app: Optional[Flask] = None) -> PersistentJobQueue[Any]:
        """The queue of ``app`` (default: the current app)."""
        return app_queue(app or _current_app())

    @property
    def queue(self) -> PersistentJobQueue[Any]:
        """The current app's queue."""
        return self.get_queue()

    def __mongo_job_queue__(self) -> PersistentJobQueue[Any]:
        """The queue ``mongo-job-queue --app module:extension`` means: that of the one app initialised.

        Raises:
            QueueStateError: no app or several: the message says what to pass instead.
        """
        apps = list(self._apps)
        if len(apps) == 1:
            return self.get_queue(apps[0])
        if not apps:
            raise QueueStateError(
                "the MongoJobQueue extension is not initialised on any app yet (an app factory builds it later): "
                "pass the factory, e.g. --app myapp:create_app, or an app, e.g. --app myapp.wsgi:app"
            )
        names = ", ".join(sorted(repr(app.name) for app in apps))
        raise QueueStateError(
            f"the MongoJobQueue extension is initialised on {len(apps)} apps ({names}): "
            "pass the app, e.g. --app myapp.wsgi:app, or its factory"
        )

    def enqueue(self, job_type: str, data: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> Any:
        """:meth:`~mongo_job_queue.PersistentJobQueue.enqueue` on the current app's queue."""
        return self.queue.enqueue(job_type, data, **kwargs)

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Any]:
        """:meth:`~mongo_job_queue.PersistentJobQueue.enqueue_many` on the current app's queue."""
        return self.queue.enqueue_many(jobs)

    def start_worker(self, app: Optional[Flask] = None, *, wait: bool = True) -> bool:
        """Start the worker in this process, e.g. from gunicorn's ``post_fork``; True if this call started it.

        ``wait=True`` starts it now and raises if it cannot (no handler, no
        database). ``wait=False`` returns at once (False) and leaves the
        start to a background thread that retries it with backoff: what a
        ``post_fork`` hook wants, since a worker that fails to boot halts
        gunicorn. ``queue.running`` tells when it runs.
        """
        app = app or _current_app()
        starter: WorkerStarter = app.extensions[EXTENSION_KEY].starter
        if not wait:
            starter.start_in_background("start_worker(wait=False) called")
            return False
        return starter.start("start_worker() called")


def app_queue(app: Flask) -> PersistentJobQueue[Any]:
    """The queue of ``app``; also what ``mongo-job-queue --app module:app`` runs on.

    Raises:
        QueueStateError: the extension is not initialised on ``app``.
    """
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise QueueStateError(f"mongo-job-queue is not initialised on Flask app {app.name!r}: call init_app")
    return state.queue  # type: ignore[no-any-return]


def _current_app() -> Flask:
    if not has_app_context():
        raise QueueStateError("no Flask application context: pass app= or push one")
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    settings = {key[len(PREFIX) :]: value for key, value in config.items() if key.startswith(PREFIX)}
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        known = ", ".join(PREFIX + k for k in sorted(_SETTINGS))
        raise ConfigError(f"unknown setting(s) {', '.join(PREFIX + k for k in unknown)}; known: {known}")
    return settings


def _in_app_context(app: Flask, fn: HandlerFn) -> HandlerFn:
    # Worker threads have no application context; handlers expect one (config, extensions).
    @functools.wraps(fn)
    def run(job: Any) -> Any:
        with app.app_context():
            return fn(job)

    return run


def decide_start(app: Flask, start_worker: bool) -> StartDecision:
    """Whether this process runs the app's worker: now, at its first request, or never.

    Only ``start_worker`` turns it on; the environment can only hold it back.
    """
    if not start_worker:
        return StartDecision(Start.NEVER, "MONGO_JOB_QUEUE_START_WORKER is not set")
    if app.testing:
        return StartDecision(Start.NEVER, "TESTING is set: tests run jobs with mongo_job_queue.testing")
    reloader_child = os.environ.get("WERKZEUG_RUN_MAIN") == "true"
    ctx = click.get_current_context(silent=True)
    # The flask CLI (FlaskGroup) keeps a ScriptInfo in its context; other click
    # programs that load the app (uvicorn, custom launchers) have none and
    # serve like any other server.
    if ctx is not None and ctx.find_object(ScriptInfo) is not None and not reloader_child:
        command = ctx.command.name if ctx.command is not None else None
        if command != "run":
            # Commands of app.cli load the app in the group's context, before their own.
            return StartDecision(
                Start.NEVER, f"the flask CLI loaded the app for a command, not 'flask run' ({command})"
            )
        reload = ctx.params.get("reload")
        if reload is None:
            reload = app.debug
        if reload:
            return StartDecision(
                Start.NEVER, "this is the debug reloader's watcher process; the serving process it spawns starts it"
            )
        return StartDecision(Start.NOW, "flask run", exit_on_sigterm=True)
    if reloader_child:
        return StartDecision(Start.NOW, "the debug reloader's serving process")
    under_server = prefork_decision()
    if under_server is not None:
        return under_server
    if app.debug:
        return StartDecision(
            Start.LAZY,
            "debug mode: this may be the debug reloader's watcher process",
            then="it starts at this process's first request, if it serves any (the watcher serves none)",
        )
    return StartDecision(Start.LAZY, "not started by 'flask run': this process may still fork before it serves")


@click.command(
    "mongo-job-queue",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    short_help="Run a job worker, show stats, enqueue, retry, cancel, purge.",
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def _command(args: tuple[str, ...]) -> None:
    """The standalone ``mongo-job-queue`` commands on this app's queue (``--help`` for details)."""
    queue = current_app.extensions[EXTENSION_KEY].queue
    code = cli.main(list(args), queue=queue, prog="flask mongo-job-queue")
    sys.exit(code)
