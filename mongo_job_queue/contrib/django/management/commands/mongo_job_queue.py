"""``manage.py mongo_job_queue COMMAND``: the whole ``mongo-job-queue`` command line, on the project's queue.

Every command of :mod:`mongo_job_queue.cli` (``stats``, ``enqueue``,
``retry``, ``cancel``, ``pause``, ``resume``, ``purge``, ``schedules``,
``jobs``, ``workers``, ``admin``, ``worker`` and any added later) with its own options, help and exit codes,
minus ``--app``: ``manage.py`` has set Django up, so the handlers of the
registry modules and the apps' ``jobs`` modules are registered.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandParser, OutputWrapper

from mongo_job_queue import cli
from mongo_job_queue.contrib.django import get_queue

#: Options that ``manage.py`` reads before it runs any command; the CLI does not know them.
_DJANGO_GLOBALS = ("--settings", "--pythonpath")


class Command(BaseCommand):
    help = (
        "The mongo-job-queue command line on the project's queue: "
        "'manage.py mongo_job_queue --help' lists its commands, 'manage.py mongo_job_queue COMMAND --help' "
        "their options. Exit codes: 0 ok, 1 forced or unexpected, 2 bad arguments, 3 no handler registered, "
        "4 database unreachable, 5 refused."
    )
    # The command line checks what it needs itself (the database, the handlers), with its own exit codes.
    requires_system_checks: Sequence[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "args", nargs=argparse.REMAINDER, metavar="COMMAND ...", help="a mongo-job-queue command and its options"
        )

    def run_from_argv(self, argv: list[str]) -> None:
        # The command line's own parser reads everything after the command's name, --help included.
        self._called_from_command_line = True
        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        self._exit(self._run(_without_django_globals(argv[2:]), prog))

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("mongo_job_queue", "stats", "--json")``."""
        self._exit(self._run([str(a) for a in args], "manage.py mongo_job_queue"))

    def _run(self, argv: list[str], prog: str) -> int:
        out, err = _Text(self.stdout), _Text(self.stderr)
        return cli.main(argv, queue=get_queue(), prog=prog, out=cast(TextIO, out), err=cast(TextIO, err))

    @staticmethod
    def _exit(code: int) -> None:
        if code:
            sys.exit(code)


class _Text(io.TextIOBase):
    """A command's output wrapper as a text stream for ``print``: written as given, no line ending added."""

    def __init__(self, wrapper: OutputWrapper) -> None:
        super().__init__()
        self._wrapper = wrapper

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._wrapper.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self._wrapper.flush()


def _without_django_globals(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--settings X`` and ``--pythonpath X``, which ``manage.py`` has already applied."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _DJANGO_GLOBALS:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in _DJANGO_GLOBALS)):
            kept.append(arg)
    return kept
