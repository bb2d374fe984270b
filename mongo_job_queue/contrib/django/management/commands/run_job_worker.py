"""``manage.py run_job_worker``: the standalone ``mongo-job-queue worker``, on the project's queue."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mongo_job_queue import cli
from mongo_job_queue.contrib.django import get_queue


class Command(BaseCommand):
    help = (
        "Run a mongo-job-queue worker in the foreground until SIGTERM/SIGINT (a second signal forces). "
        "Exit codes: 0 ok, 1 forced, 2 bad arguments, 3 no handler registered, 4 database unreachable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        cli.add_worker_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            code = cli.run_worker_command(get_queue(), argparse.Namespace(**options))
        except cli.CommandError as exc:
            self.stderr.write(f"run_job_worker: error: {exc}")
            sys.exit(exc.code)
        if code:
            sys.exit(code)
