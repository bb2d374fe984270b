"""Finding the app's queue for ``--app``, and checking it can reach its database.

``--app`` takes what users have at hand: the queue itself, a Flask app or
the Flask extension, the Django integration, or a function returning one of
them (an app factory). Anything else fails with an error that says what the
module offers instead, so a wrong name is fixed from the message alone.

An object resolves itself when it has a ``__mongo_job_queue__()`` method
(the Flask extension, ``mongo_job_queue.contrib.django``): the CLI needs no
import of Flask or Django for the others.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Optional

from pymongo.errors import PyMongoError

from ..errors import MongoJobQueueError
from ..queue import PersistentJobQueue
from .common import EXIT_DATABASE, EXIT_IMPORT, CommandError, first_line

__all__ = ["APP_ENV", "HOOK", "MODULE_LOOKUP", "check_database", "load_queue"]

#: The environment variable that stands for ``--app``.
APP_ENV = "MONGO_JOB_QUEUE_APP"
#: The method by which an object names its queue for ``--app``.
HOOK = "__mongo_job_queue__"
#: The attributes ``--app package.module`` (no ``:name``) looks for, in order, as ``flask --app`` does.
MODULE_LOOKUP = ("queue", "app", "application", "create_app", "make_app")
_FACTORY_NAMES = frozenset({"create_app", "make_app", "make_queue", "create_queue"})
_TAKES = (
    "--app takes a PersistentJobQueue, a Flask app, the MongoJobQueue extension, "
    "mongo_job_queue.contrib.django, or a function returning one of them"
)


def load_queue(spec: str) -> PersistentJobQueue[Any]:
    """Import ``package.module:name`` and return the queue it stands for.

    ``name`` may be a queue, a Flask app or :class:`~mongo_job_queue.contrib.flask.MongoJobQueue`
    (their queue), ``mongo_job_queue.contrib.django`` (the project's queue,
    after ``django.setup()``), or a function returning one of these. Without
    ``:name``, the module itself if it names its queue, else the first of
    :data:`MODULE_LOOKUP` it has. The current directory is importable, as
    with gunicorn.

    Raises:
        CommandError: with :data:`EXIT_IMPORT`, saying what to pass instead.
    """
    module_name, _, attr = spec.partition(":")
    parts = module_name.split(".") + (attr.split(".") if attr else [])
    if not module_name or not all(part.isidentifier() for part in parts):
        raise CommandError(f"--app must look like package.module:queue, got {spec!r}", EXIT_IMPORT)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever the app's import raises: one line
        raise CommandError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", EXIT_IMPORT) from exc
    obj: Any = module
    if attr:
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise CommandError(f"{module_name!r} has no attribute {attr!r}{_offers(module)}", EXIT_IMPORT) from None
    elif _hook(module) is None:
        found = next((name for name in MODULE_LOOKUP if hasattr(module, name)), None)
        if found is None:
            looked = ", ".join(MODULE_LOOKUP)
            raise CommandError(
                f"--app {module_name} looks for one of {looked} in the module, and {module_name!r} has none"
                f"{_offers(module)}",
                EXIT_IMPORT,
            )
        obj, spec = getattr(module, found), f"{module_name}:{found}"
    return _resolve(obj, spec)


def _resolve(obj: Any, spec: str, *, called: bool = False) -> PersistentJobQueue[Any]:
    if isinstance(obj, PersistentJobQueue):
        return obj
    hook = _hook(obj)
    if hook is not None:
        try:
            obj = hook()
        except CommandError:
            raise
        except Exception as exc:  # the integration says what is missing
            raise CommandError(f"{spec}: {exc}", EXIT_IMPORT) from exc
        if isinstance(obj, PersistentJobQueue):
            return obj
        raise CommandError(f"{spec} gave a {type(obj).__name__}, not a PersistentJobQueue", EXIT_IMPORT)
    flask_queue = _flask_app_queue(obj, spec)
    if flask_queue is not None:
        return flask_queue
    if callable(obj) and not isinstance(obj, type) and not called:
        try:
            made = obj()
        except Exception as exc:
            raise CommandError(f"{spec}() raised {type(exc).__name__}: {exc}", EXIT_IMPORT) from exc
        return _resolve(made, f"{spec}()", called=True)
    raise CommandError(f"{spec} is a {_kind(obj)}, not a queue: {_TAKES}", EXIT_IMPORT)


def _hook(obj: Any) -> Optional[Callable[[], Any]]:
    """``obj.__mongo_job_queue__``, looked up without running a proxy's ``__getattr__`` (Flask's ``current_app``)."""
    try:
        inspect.getattr_static(obj, HOOK)
    except AttributeError:
        return None
    hook = getattr(obj, HOOK, None)
    return hook if callable(hook) else None


def _flask_app_queue(obj: Any, spec: str) -> Optional[PersistentJobQueue[Any]]:
    """The queue of a Flask app; None if ``obj`` is none (Flask is then not imported: the app would have)."""
    flask = sys.modules.get("flask")
    if flask is None or not isinstance(obj, flask.Flask):
        return None
    from ..contrib.flask import app_queue

    try:
        return app_queue(obj)
    except MongoJobQueueError as exc:
        raise CommandError(f"{spec}: {exc}", EXIT_IMPORT) from exc


def _kind(obj: Any) -> str:
    if isinstance(obj, ModuleType):
        return f"module that names no queue ({', '.join(MODULE_LOOKUP)} or {HOOK}())"
    if isinstance(obj, type):
        return f"class ({obj.__name__})"
    return type(obj).__name__


def _offers(module: ModuleType) -> str:
    """What in ``module`` ``--app`` could take, as ``"; try --app m:name (...)"``, or nothing."""
    found = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        try:
            kind = _candidate(name, value, module.__name__)
        except Exception:  # noqa: BLE001 - a proxy outside its context (Flask's current_app) is no candidate
            kind = None
        if kind:
            found.append(f"--app {module.__name__}:{name} ({kind})")
    return f"; try {', '.join(found[:5])}" if found else ""


def _candidate(name: str, value: Any, module_name: str) -> Optional[str]:
    if isinstance(value, PersistentJobQueue):
        return "a queue"
    if isinstance(value, (ModuleType, type)):
        return None
    if _hook(value) is not None:
        return type(value).__name__
    flask = sys.modules.get("flask")
    if flask is not None and isinstance(value, flask.Flask):
        return "a Flask app"
    if callable(value) and name in _FACTORY_NAMES and getattr(value, "__module__", None) == module_name:
        return "a function"
    return None


def check_database(queue: PersistentJobQueue[Any], timeout_s: float) -> None:
    """Fail fast with :data:`EXIT_DATABASE` when the server cannot be reached."""
    try:
        queue.store.admin.ping(timeout_s)
    except PyMongoError as exc:
        raise CommandError(f"database unreachable within {timeout_s:g}s: {first_line(exc)}", EXIT_DATABASE) from exc
    except Exception as exc:  # e.g. MongoEngine's "no connection defined for alias"
        raise CommandError(f"no database connection: {first_line(exc)}", EXIT_DATABASE) from exc
