"""The command line's arguments: one argparse definition for every front end.

The standalone command (which finds the queue with ``--app``), ``flask
mongo-job-queue`` and Django's ``run_job_worker`` (which already know it)
all build their options here, so the options, their help and the exit codes
are the same everywhere.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from ..status import ALL_STATUSES
from ..store.listing import MAX_LIST
from .app import APP_ENV
from .batches import add_batch_commands
from .common import EXIT_CODES_HELP
from .jobs import RETRYABLE
from .values import (
    csv_names,
    field_equals,
    grace_seconds,
    json_object,
    log_level,
    parse_duration_ms,
    port,
    positive_int,
    since,
    status_names,
    timeout_seconds,
)

__all__ = ["add_common_arguments", "add_worker_arguments", "build_parser"]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's options, shared by the CLI, ``flask mongo-job-queue worker`` and ``run_job_worker``."""
    add_common_arguments(parser)
    parser.add_argument("-c", "--concurrency", type=positive_int, help="handler threads (default: the queue's config)")
    parser.add_argument(
        "-Q",
        "--queues",
        type=csv_names,
        action="extend",
        metavar="NAME[,NAME]",
        help="queue names to claim from, comma-separated or repeated (default: the queue's config)",
    )
    parser.add_argument(
        "-t",
        "--job-types",
        type=csv_names,
        action="extend",
        metavar="TYPE[,TYPE]",
        help="claim only these registered job types (default: every registered type)",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="exit 0 once no job of its types is due in its queues and none is running here",
    )
    parser.add_argument(
        "--max-jobs", type=positive_int, metavar="N", help="stop claiming after N jobs ran, then exit 0"
    )
    parser.add_argument(
        "--no-schedules",
        action="store_true",
        help="do not fire the app's schedules from this worker (others still do)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=grace_seconds,
        default=30.0,
        metavar="SECONDS",
        help="on the first SIGTERM/SIGINT, time running jobs get to finish (default 30; inf: as long as they take)",
    )
    parser.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (0: any free port, logged); "
        "needs the prometheus extra",
    )
    parser.add_argument(
        "--metrics-addr", default="0.0.0.0", metavar="ADDR", help="address for --metrics-port (default 0.0.0.0)"
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--db-timeout``, which every command takes."""
    parser.add_argument(
        "--log-level", type=log_level, metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (worker default INFO)"
    )
    parser.add_argument(
        "--db-timeout",
        type=timeout_seconds,
        default=5.0,
        metavar="SECONDS",
        help="give up reaching the database after this long, exit 4 (default 5)",
    )


def _add_app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-A",
        "--app",
        default=os.environ.get(APP_ENV),
        metavar="MODULE:QUEUE",
        help="package.module:name of the app's queue, Flask app or extension, or a function returning one; "
        f"mongo_job_queue.contrib.django for a Django project (default: ${APP_ENV})",
    )


def build_parser(prog: str = "mongo-job-queue", *, with_app: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``with_app=False`` when a framework already knows the queue."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run and administer a mongo-job-queue queue.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, within: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = within.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if with_app:
            _add_app(p)
        if name != "worker":
            add_common_arguments(p)
        return p

    add_worker_arguments(command("worker", "run a worker in the foreground until SIGTERM/SIGINT"))
    stats = command("stats", "job counts by queue and status, and the age of the oldest due job")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    limits = command("limits", "limits and mutex keys: definitions, running holders per key, next start of a rate")
    limits.add_argument("--json", action="store_true", help="print JSON instead of text")
    schedules = command("schedules", "schedules with their next and last fire times (times in UTC)")
    schedules.add_argument("--json", action="store_true", help="print JSON instead of text")
    enqueue = command("enqueue", "enqueue one job and print its id")
    enqueue.add_argument("job_type", metavar="TYPE")
    enqueue.add_argument("--data", type=json_object, default={}, metavar="JSON", help="the payload, a JSON object")
    enqueue.add_argument(
        "--fields", type=json_object, default={}, metavar="JSON", help="your model's own fields, a JSON object"
    )
    enqueue.add_argument("--queue", default="default", help="queue name (default: default)")
    enqueue.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    enqueue.add_argument(
        "--delay", type=parse_duration_ms, metavar="DURATION", help="run no earlier than this from now"
    )
    enqueue.add_argument("--max-retries", type=int, metavar="N", help="retries after the first attempt")
    enqueue.add_argument("--unique-key", metavar="KEY", help="at most one unfinished job with this key")
    enqueue.add_argument(
        "--unique-for", type=parse_duration_ms, metavar="DURATION", help="with --unique-key: also this long after"
    )
    enqueue.add_argument("--mutex-key", metavar="KEY", help="never runs beside another job with this key")
    enqueue.add_argument("--time-limit", type=parse_duration_ms, metavar="DURATION", help="this run's time limit")
    retry = command("retry", "queue failed or cancelled jobs again: these ids, or every job a filter matches")
    retry.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    _add_filter(retry, RETRYABLE, "instead of ids: ")
    retry.add_argument("-y", "--yes", action="store_true", help="with a filter: retry without asking to confirm")
    cancel = command("cancel", "cancel pending jobs; ask running ones to stop")
    cancel.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    cancel.add_argument(
        "--type", dest="job_type", metavar="TYPE", help="instead of ids: every pending job of this type"
    )
    cancel.add_argument("--queue", metavar="NAME", help="instead of ids: every pending job in this queue")
    cancel.add_argument("--running", action="store_true", help="with --type/--queue: also ask the running ones to stop")
    for name, verb in (
        ("pause", "stop every worker from claiming these queues or job types"),
        ("resume", "let workers claim these queues or job types again"),
    ):
        p = command(name, verb)
        p.add_argument("--queue", dest="queues", action="append", default=[], metavar="NAME", help="repeatable")
        p.add_argument("--type", dest="job_types", action="append", default=[], metavar="TYPE", help="repeatable")
    purge = command("purge", "delete finished jobs older than a duration")
    purge.add_argument(
        "--older-than", type=parse_duration_ms, required=True, metavar="DURATION", help="e.g. 7d, 12h, 30m"
    )
    purge.add_argument(
        "--status",
        choices=["completed", "failed", "cancelled"],
        action="append",
        help="only jobs in this status (repeatable; default: all three)",
    )
    jobs = sub.add_parser("jobs", help="list jobs by filter, or show one (jobs list, jobs show ID)")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)
    listing = command("list", "the newest jobs matching a filter (times in UTC)", jobs_sub)
    _add_filter(listing, ALL_STATUSES, "")
    listing.add_argument(
        "--limit", type=positive_int, default=20, metavar="N", help=f"at most N jobs (default 20, at most {MAX_LIST})"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = command("show", "one job: fields, data, errors with tracebacks, lease, progress and result", jobs_sub)
    show.add_argument("job_id", metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="print the stored document as JSON")
    add_batch_commands(sub, command)
    workers = command("workers", "the live workers, from the worker registry (times in UTC)")
    workers.add_argument("--all", action="store_true", help="also the stopped ones and those gone silent")
    workers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    doctor = command("doctor", "check the deployment: replica set, concerns, indexes, clock, shard key, oplog")
    doctor.add_argument("--json", action="store_true", help="print JSON instead of one line per check")
    admin = command("admin", "serve the admin web UI with Werkzeug until Ctrl-C (needs the admin extra)")
    admin.add_argument("--host", default="127.0.0.1", metavar="ADDR", help="address to bind (default 127.0.0.1)")
    admin.add_argument("--port", type=port, default=8089, metavar="PORT", help="port to bind (default 8089)")
    admin.add_argument(
        "--insecure-local",
        action="store_true",
        help="let every request from this machine in as admin, without authentication (loopback addresses only)",
    )
    if with_app:
        # Parsed by the tools themselves; listed here for --help.
        sub.add_parser("demo", help="run the end-to-end demo on the embedded server (see demo --help)", add_help=False)
        sub.add_parser(
            "dev-server",
            help="serve the embedded MongoDB wire server for development until Ctrl-C (see dev-server --help)",
            add_help=False,
        )
    return parser


def _add_filter(parser: argparse.ArgumentParser, statuses: Sequence[str], prefix: str) -> None:
    """The job filter of ``jobs list`` and of a bulk ``retry``: every part given must match."""
    parser.add_argument(
        "--status",
        dest="statuses",
        type=status_names(statuses),
        action="extend",
        metavar="STATUS[,STATUS]",
        help=f"{prefix}jobs in these statuses, comma-separated or repeated ({', '.join(statuses)})",
    )
    parser.add_argument("--type", dest="job_type", metavar="TYPE", help=f"{prefix}jobs of this type")
    parser.add_argument("--queue", metavar="NAME", help=f"{prefix}jobs in this queue")
    parser.add_argument(
        "--since",
        type=since,
        metavar="WHEN",
        help=f"{prefix}jobs created since then: a duration ago (2h, 7d) or a UTC date and time (2026-05-01T10:00)",
    )
    parser.add_argument(
        "--field",
        dest="fields",
        type=field_equals,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"{prefix}jobs whose own field NAME (declared by the app's model) equals VALUE; repeatable",
    )
