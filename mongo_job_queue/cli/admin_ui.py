"""The ``admin`` command: the admin web UI on Werkzeug's server, for local use.

The UI never runs open: a command line has no ``authorize`` callable to
give, so without ``--insecure-local`` the command refuses before it touches
anything, and says how to mount the UI in the app instead. With it,
:func:`~mongo_job_queue.contrib.admin.serve.serve` admits requests from this
machine only, and binds loopback addresses only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any, NoReturn

from ..queue import PersistentJobQueue
from .app import check_database
from .common import EXIT_OK, EXIT_USAGE, CommandError, configure_logging

__all__ = ["NEEDS_AUTHORIZE", "run_admin_command"]

NEEDS_AUTHORIZE = (
    "the admin UI needs an authorize callable: mount it in your app with "
    "create_admin_app(queue, authorize=...) (see docs/admin.rst), or pass --insecure-local "
    "to serve it here to requests from this machine only, without authentication"
)


def run_admin_command(queue: PersistentJobQueue[Any], args: argparse.Namespace) -> int:
    """Serve the admin UI until Ctrl-C or SIGTERM (exit 0).

    Raises:
        CommandError: no ``--insecure-local``, the ``admin`` extra missing, or the database unreachable.
    """
    if not args.insecure_local:
        raise CommandError(NEEDS_AUTHORIZE, EXIT_USAGE)
    try:
        from ..contrib.admin.serve import serve
    except ImportError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    configure_logging(args.log_level or logging.INFO, args.log_level is not None)
    check_database(queue, args.db_timeout)
    # A supervisor's stop ends the server as Ctrl-C does; the caller's own handler is back afterwards.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        serve(queue, args.host, args.port, insecure_local=True, authorize=None)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt
