"""Finding the app's queue for ``--app package.module:queue``, and checking it can reach its database."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from pymongo.errors import PyMongoError

from ..queue import PersistentJobQueue
from .common import EXIT_DATABASE, EXIT_IMPORT, CommandError, first_line

__all__ = ["APP_ENV", "check_database", "load_queue"]

#: The environment variable that stands for ``--app``.
APP_ENV = "MONGO_JOB_QUEUE_APP"


def load_queue(spec: str) -> PersistentJobQueue[Any]:
    """Import ``package.module:attribute`` and return the queue it names.

    The attribute may be a queue or a function returning one (an app
    factory's helper). ``package.module`` alone means its ``queue``
    attribute. The current directory is importable, as with gunicorn.

    Raises:
        CommandError: with :data:`EXIT_IMPORT`.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "queue"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".") + attr.split(".")):
        raise CommandError(f"--app must look like package.module:queue, got {spec!r}", EXIT_IMPORT)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # whatever the app's import raises: one line
        raise CommandError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", EXIT_IMPORT) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attr!r}", EXIT_IMPORT) from None
    if not isinstance(obj, PersistentJobQueue) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise CommandError(f"{spec}() raised {type(exc).__name__}: {exc}", EXIT_IMPORT) from exc
    if not isinstance(obj, PersistentJobQueue):
        raise CommandError(f"{spec} is a {type(obj).__name__}, not a PersistentJobQueue", EXIT_IMPORT)
    return obj


def check_database(queue: PersistentJobQueue[Any], timeout_s: float) -> None:
    """Fail fast with :data:`EXIT_DATABASE` when the server cannot be reached."""
    try:
        queue.store.admin.ping(timeout_s)
    except PyMongoError as exc:
        raise CommandError(f"database unreachable within {timeout_s:g}s: {first_line(exc)}", EXIT_DATABASE) from exc
    except Exception as exc:  # e.g. MongoEngine's "no connection defined for alias"
        raise CommandError(f"no database connection: {first_line(exc)}", EXIT_DATABASE) from exc
