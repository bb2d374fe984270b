"""Django integration: an app for ``INSTALLED_APPS``, a handler registry and ``run_job_worker``.

::

    INSTALLED_APPS = [..., "mongo_job_queue.contrib.django"]

    MONGO_JOB_QUEUE = {
        "MODEL": "shop.jobs_model:Job",          # required
        "MONGODB_URI": "mongodb://localhost/shop",  # optional: else connect MongoEngine yourself
        "MONGODB_DB": None,                      # the database, if the URI names none
        "CONFIG": {"concurrency": 4},            # QueueConfig keys
        "AUTOSTART": False,                      # run a worker in serving processes
        "STOP_TIMEOUT": 30,                      # seconds; math.inf or None: as long as jobs take
        "REGISTRY_MODULES": ["billing.jobs"],    # plain modules with handlers
        "AUTODISCOVER": True,                    # import <app>.jobs of every app
    }

Handlers live next to the code they serve, in a ``jobs`` module of any
installed app, found like ``admin.autodiscover`` finds ``admin`` modules::

    # shop/jobs.py
    from mongo_job_queue.contrib.django import handler

    @handler("send_receipt")
    def send_receipt(job):
        ...

Code outside Django apps registers in a module listed in
``REGISTRY_MODULES``. Everything enqueues through :func:`get_queue` (or
:func:`enqueue`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any, Optional

from ...errors import MongoJobQueueError
from ...handlers import HandlerFn
from ...queue import PersistentJobQueue
from ...schedules.definition import Schedule
from .._boot import Start, StartDecision, WorkerStarter, build_queue, stop_timeout_setting
from .._servers import prefork_decision

__all__ = [
    "SETTING",
    "autodiscover",
    "decide_start",
    "enqueue",
    "get_queue",
    "handler",
    "periodic",
    "register_handler",
    "schedule",
    "settings_dict",
    "start_worker",
]

log = logging.getLogger(__name__)

#: The name of the settings dict.
SETTING = "MONGO_JOB_QUEUE"
_KEYS = frozenset(
    {"MODEL", "MONGODB_URI", "MONGODB_DB", "CONFIG", "AUTOSTART", "STOP_TIMEOUT", "REGISTRY_MODULES", "AUTODISCOVER"}
)
_SERVING_COMMANDS = frozenset({"runserver"})

_lock = threading.RLock()
_queue: Optional[PersistentJobQueue[Any]] = None
_starter: Optional[WorkerStarter] = None


def settings_dict() -> dict[str, Any]:
    """``settings.MONGO_JOB_QUEUE``, checked: unknown keys fail instead of being ignored.

    Raises:
        ImproperlyConfigured: the dict is missing, not a dict, has unknown keys, or a flag
            (``AUTOSTART``, ``AUTODISCOVER``) that is not True or False.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    value = getattr(settings, SETTING, None)
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict with at least 'MODEL', got {value!r}")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ImproperlyConfigured(f"settings.{SETTING} has unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    if "MODEL" not in value:
        raise ImproperlyConfigured(f"settings.{SETTING}['MODEL'] is required, e.g. 'shop.jobs_model:Job'")
    for flag in ("AUTOSTART", "AUTODISCOVER"):
        # A string ("false", from an environment variable) would be truthy: refused, as Flask's START_WORKER is.
        if flag in value and not isinstance(value[flag], bool):
            raise ImproperlyConfigured(f"settings.{SETTING}[{flag!r}] must be True or False, got {value[flag]!r}")
    return dict(value)


def get_queue() -> PersistentJobQueue[Any]:
    """The project's queue, built from the settings at first use; no database access."""
    global _queue, _starter
    if _queue is not None:
        return _queue
    from django.core.exceptions import ImproperlyConfigured

    with _lock:
        if _queue is None:
            conf = settings_dict()
            try:
                stop_timeout = stop_timeout_setting(conf.get("STOP_TIMEOUT", 30), f"{SETTING}['STOP_TIMEOUT']")
                queue = build_queue(
                    conf["MODEL"],
                    config=conf.get("CONFIG"),
                    mongodb_uri=conf.get("MONGODB_URI"),
                    mongodb_db=conf.get("MONGODB_DB"),
                    setting_name=SETTING + "[{!r}]",
                )
            except MongoJobQueueError as exc:
                raise ImproperlyConfigured(f"settings.{SETTING}: {exc}") from exc
            _starter = WorkerStarter(queue, stop_timeout=stop_timeout, name="Django")
            _queue = queue
    return _queue


def __mongo_job_queue__() -> PersistentJobQueue[Any]:
    """What ``mongo-job-queue --app mongo_job_queue.contrib.django`` runs on: the project's queue, Django set up.

    ``django.setup()`` runs this app's ``ready()``, which imports the
    registry modules and the apps' ``jobs`` modules: without it the queue
    would have no handler.

    Raises:
        ImproperlyConfigured: no settings module, or this app is not installed.
    """
    import django
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ImproperlyConfigured(
            "DJANGO_SETTINGS_MODULE is not set: set it (e.g. DJANGO_SETTINGS_MODULE=project.settings), "
            "or run 'python manage.py mongo_job_queue ...'"
        )
    django.setup()
    from django.apps import apps

    if not apps.is_installed(__name__):
        raise ImproperlyConfigured(f"add {__name__!r} to INSTALLED_APPS: it loads the handlers")
    return get_queue()


# ``--app mongo_job_queue.contrib.django:get_queue`` means the same: a bare get_queue() would skip django.setup().
get_queue.__mongo_job_queue__ = __mongo_job_queue__  # type: ignore[attr-defined]


def register_handler(job_type: str, fn: HandlerFn, **options: Any) -> HandlerFn:
    """Register ``fn`` for ``job_type`` on the project's queue (options as ``PersistentJobQueue.register_handler``).

    The handler closes stale Django database connections before and after
    each job, as Django does around a request.
    """
    get_queue().register_handler(job_type, _with_django_connections(fn), **options)
    return fn


def handler(job_type: str, **options: Any) -> Callable[[HandlerFn], HandlerFn]:
    """Decorator form of :func:`register_handler`, for ``<app>/jobs.py`` and registry modules."""

    def decorate(fn: HandlerFn) -> HandlerFn:
        return register_handler(job_type, fn, **options)

    return decorate


def schedule(
    name: str,
    cron_expression: Optional[str] = None,
    job_type: Optional[str] = None,
    data: Optional[Mapping[str, Any]] = None,
    **options: Any,
) -> Schedule:
    """:meth:`~mongo_job_queue.PersistentJobQueue.schedule` on the project's queue, for ``<app>/jobs.py``."""
    return get_queue().schedule(name, cron_expression, job_type, data, **options)


def periodic(name: str, cron_expression: Optional[str] = None, **options: Any) -> Callable[[HandlerFn], HandlerFn]:
    """:meth:`~mongo_job_queue.PersistentJobQueue.periodic` on the project's queue.

    The handler closes stale Django database connections, as with :func:`register_handler`.
    """

    def decorate(fn: HandlerFn) -> HandlerFn:
        get_queue().periodic(name, cron_expression, **options)(_with_django_connections(fn))
        return fn

    return decorate


def enqueue(job_type: str, data: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> Any:
    """:meth:`~mongo_job_queue.PersistentJobQueue.enqueue` on the project's queue."""
    return get_queue().enqueue(job_type, data, **kwargs)


def autodiscover() -> None:
    """Import the ``REGISTRY_MODULES`` and, unless ``AUTODISCOVER`` is False, every installed app's ``jobs``.

    Idempotent: a module already imported is not run again.
    """
    from django.utils.module_loading import autodiscover_modules

    conf = settings_dict()
    modules = conf.get("REGISTRY_MODULES", [])
    if isinstance(modules, str) or not isinstance(modules, Sequence):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{SETTING}['REGISTRY_MODULES'] must be a list of module paths, got {modules!r}")
    for name in modules:
        import_module(name)
    if conf.get("AUTODISCOVER", True) is True:
        autodiscover_modules("jobs")


def start_worker(*, wait: bool = True) -> bool:
    """Start the worker in this process (e.g. from gunicorn's ``post_fork``); True if this call started it.

    ``wait=True`` starts it now and raises if it cannot. ``wait=False``
    returns at once (False) and leaves the start to a background thread
    that retries it with backoff; ``get_queue().running`` tells when it runs.
    """
    get_queue()
    assert _starter is not None
    if not wait:
        _starter.start_in_background("start_worker(wait=False) called")
        return False
    return _starter.start("start_worker() called")


def _on_ready() -> None:
    # Called by the AppConfig's ready(): registry, autodiscovery and the autostart decision, no database access.
    queue = get_queue()
    autodiscover()
    assert _starter is not None
    conf = settings_dict()
    decision = decide_start(conf.get("AUTOSTART", False) is True)
    if decision.when is Start.LAZY:
        from django.core.signals import request_started

        request_started.connect(_on_request, dispatch_uid="mongo_job_queue_lazy_start")
    # A start "now" runs in a background thread: ready() must not touch the database.
    _starter.apply(decision)
    log.debug("Django: job types registered: %s", ", ".join(queue.registry.types()) or "none")


def _on_request(sender: Any, **kwargs: Any) -> None:
    # request_started is sent with send(), not send_robust(): an exception here would fail the request.
    if _starter is not None:
        try:
            _starter.on_request()
        except Exception:  # the request must be served whatever the worker does
            log.exception("Django: the lazy start of the job worker failed")


def _with_django_connections(fn: HandlerFn) -> HandlerFn:
    @functools.wraps(fn)
    def run(job: Any) -> Any:
        from django.db import close_old_connections

        close_old_connections()
        try:
            return fn(job)
        finally:
            close_old_connections()

    return run


def management_command(argv: Sequence[str]) -> Optional[str]:
    """The ``manage.py``/``django-admin`` subcommand this process runs, or None for a server process."""
    if not argv:
        return None
    program = os.path.basename(argv[0])
    launched = program in ("manage.py", "django-admin", "django-admin.py") or argv[0].endswith(
        os.path.join("django", "__main__.py")
    )
    if not launched:
        return None
    return next((arg for arg in argv[1:] if not arg.startswith("-")), "help")


def decide_start(
    autostart: bool,
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    under_pytest: Optional[bool] = None,
) -> StartDecision:
    """Whether this process runs the worker: now, at its first request, or never.

    Only ``AUTOSTART`` turns it on; the process can only hold it back.
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    under_pytest = "pytest" in sys.modules if under_pytest is None else under_pytest
    if not autostart:
        return StartDecision(Start.NEVER, f"{SETTING}['AUTOSTART'] is not set")
    command = management_command(argv)
    if under_pytest or command == "test":
        return StartDecision(Start.NEVER, "running tests: they run jobs with mongo_job_queue.testing")
    if command is not None:
        if command not in _SERVING_COMMANDS:
            return StartDecision(Start.NEVER, f"'manage.py {command}' is not a server")
        if environ.get("RUN_MAIN") == "true":
            return StartDecision(Start.NOW, "runserver's serving process")
        if "--noreload" in argv:
            return StartDecision(Start.NOW, "runserver --noreload", exit_on_sigterm=True)
        return StartDecision(
            Start.NEVER, "this is runserver's autoreloader watcher process; the serving process it spawns starts it"
        )
    under_server = prefork_decision()
    if under_server is not None:
        return under_server
    return StartDecision(
        Start.LAZY, "not started by 'manage.py runserver': this process may still fork before it serves"
    )
