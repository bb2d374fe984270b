"""The ``mongo-job-queue`` command line (also ``python -m mongo_job_queue``).

One argparse implementation serves three front ends: the standalone command
(which finds the app's queue with ``--app package.module:queue``), ``flask
mongo-job-queue`` and Django's ``run_job_worker`` (which already know it). So
the options, their help and the exit codes are the same everywhere.

The package, one module per part: :mod:`.parser` (the arguments, typed by
:mod:`.values`), :mod:`.app` (finding the queue for ``--app``),
:mod:`.commands` (the administration commands), :mod:`.jobs` (inspecting
jobs and workers, retrying by filter), :mod:`.render` (how they print),
:mod:`.admin_ui` (the ``admin`` web UI), :mod:`.worker` (the ``worker``
command) and :mod:`.common` (exit codes and one-line errors).
:func:`main` here parses one command line and dispatches it.

Errors are one line on stderr and a distinct exit code, never a traceback:
an operator or a supervisor (systemd, Kubernetes) must tell a typo in the
command from a database that is down.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, Optional, TextIO

from pymongo.errors import PyMongoError

from ..errors import MongoJobQueueError
from ..queue import PersistentJobQueue
from .admin_ui import run_admin_command
from .app import APP_ENV, check_database, load_queue
from .commands import ADMIN_COMMANDS
from .common import (
    EXIT_CODES_HELP,
    EXIT_DATABASE,
    EXIT_FORCED,
    EXIT_IMPORT,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    configure_logging,
    first_line,
)
from .doctor import run_doctor_command
from .parser import add_common_arguments, add_worker_arguments, build_parser
from .values import parse_duration_ms
from .worker import run_worker_command

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_DATABASE",
    "EXIT_FORCED",
    "EXIT_IMPORT",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "CommandError",
    "add_common_arguments",
    "add_worker_arguments",
    "build_parser",
    "check_database",
    "load_queue",
    "main",
    "parse_duration_ms",
    "run_worker_command",
]

log = logging.getLogger(__name__)


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    queue: Optional[PersistentJobQueue[Any]] = None,
    prog: str = "mongo-job-queue",
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Run one command; return its exit code.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        queue: The queue, when a framework already knows it: ``--app`` is then not offered.
        prog: Program name shown in help and errors.
        out: Where results go (default stdout).
        err: Where errors go (default stderr).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    if queue is None and args_list[:1] == ["demo"]:
        from ..dev.demo import main as demo_main

        return demo_main(args_list[1:])
    if queue is None and args_list[:1] == ["dev-server"]:
        from ..dev.server import main as dev_server_main

        return dev_server_main(args_list[1:], out=out, err=err)
    parser = build_parser(prog, with_app=queue is None)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse printed the usage line and the error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if queue is None:
            if not args.app:
                raise CommandError(f"--app is required (or set ${APP_ENV}), e.g. --app myapp.tasks:queue", EXIT_USAGE)
            queue = load_queue(args.app)
        return _dispatch(queue, args, out, err)
    except CommandError as exc:
        print(f"{prog}: error: {exc}", file=err)
        return exc.code
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        print(f"{prog}: error: unexpected {first_line(exc)} (--log-level DEBUG shows the traceback)", file=err)
        return EXIT_FORCED


def _dispatch(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "worker":
        return run_worker_command(queue, args)
    try:
        if args.command == "admin":
            return run_admin_command(queue, args)
        if args.command == "doctor":  # its own ping and checks, with its own bounds
            return run_doctor_command(queue, args, out, err)
        configure_logging(args.log_level or logging.WARNING, args.log_level is not None)
        check_database(queue, args.db_timeout)
        return ADMIN_COMMANDS[args.command](queue, args, out, err)
    except MongoJobQueueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except PyMongoError as exc:
        raise CommandError(f"database error: {first_line(exc)}", EXIT_DATABASE) from exc
