"""The ``mongo-job-queue`` command line (also ``python -m mongo_job_queue``).

One argparse implementation serves three front ends: the standalone command
(which finds the app's queue with ``--app package.module:queue``), ``flask
mongo-job-queue`` and Django's ``run_job_worker`` (which already know it). So
the options, their help and the exit codes are the same everywhere.

Errors are one line on stderr and a distinct exit code, never a traceback:
an operator or a supervisor (systemd, Kubernetes) must tell a typo in the
command from a database that is down.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Optional, TextIO

from pymongo.errors import PyMongoError

from .cli_commands import (
    ADMIN_COMMANDS,
    EXIT_CODES_HELP,
    EXIT_DATABASE,
    EXIT_IMPORT,
    EXIT_REFUSED,
    EXIT_USAGE,
    UNIT_MS,
    CommandError,
)
from .errors import MongoJobQueueError, QueueStateError
from .handlers import HandlerFn
from .queue import PersistentJobQueue
from .runner import EXIT_FORCED, EXIT_OK, run_worker

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

APP_ENV = "MONGO_JOB_QUEUE_APP"
_CHECK_INTERVAL_S = 0.05
_COUNTER_HOLD_S = 5.0
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)?$")

# -- finding the queue ------------------------------------------------------


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
        raise CommandError(f"database unreachable within {timeout_s:g}s: {_first_line(exc)}", EXIT_DATABASE) from exc
    except Exception as exc:  # e.g. MongoEngine's "no connection defined for alias"
        raise CommandError(f"no database connection: {_first_line(exc)}", EXIT_DATABASE) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- arguments ----------------------------------------------------------------


def _csv(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if math.isnan(number):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}")
    return number


def _grace_seconds(value: str) -> float:
    """Seconds >= 0, or ``inf``: wait as long as it takes (passed on as ``math.inf``)."""
    number = _number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (or inf), got {value}")
    return number


def _timeout_seconds(value: str) -> float:
    """A finite number of seconds > 0: a timeout that gives up, as its exit code says."""
    number = _number(value)
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return number


def parse_duration_ms(value: str) -> int:
    """``7d``, ``12h``, ``30m``, ``45s``, ``500ms`` or plain milliseconds, as milliseconds."""
    match = _DURATION.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 7d, 12h, 30m, 45s or 500ms, got {value!r}")
    return int(match.group(1)) * UNIT_MS[match.group(2) or "ms"]


def _json_object(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _log_level(value: str) -> int:
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown log level {value!r} (DEBUG, INFO, WARNING, ERROR)")
    return level


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's options, shared by the CLI, ``flask mongo-job-queue worker`` and ``run_job_worker``."""
    add_common_arguments(parser)
    parser.add_argument("-c", "--concurrency", type=_positive_int, help="handler threads (default: the queue's config)")
    parser.add_argument(
        "-Q",
        "--queues",
        type=_csv,
        action="extend",
        metavar="NAME[,NAME]",
        help="queue names to claim from, comma-separated or repeated (default: the queue's config)",
    )
    parser.add_argument(
        "-t",
        "--job-types",
        type=_csv,
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
        "--max-jobs", type=_positive_int, metavar="N", help="stop claiming after N jobs ran, then exit 0"
    )
    parser.add_argument(
        "--no-schedules",
        action="store_true",
        help="do not fire the app's schedules from this worker (others still do)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=_grace_seconds,
        default=30.0,
        metavar="SECONDS",
        help="on the first SIGTERM/SIGINT, time running jobs get to finish (default 30; inf: as long as they take)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (0: any free port, logged); "
        "needs the prometheus extra",
    )
    parser.add_argument(
        "--metrics-addr", default="0.0.0.0", metavar="ADDR", help="address for --metrics-port (default 0.0.0.0)"
    )


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {number}")
    return number


def _serve_metrics(queue: PersistentJobQueue[Any], args: argparse.Namespace) -> Any:
    """Instrument the queue and serve ``/metrics`` for ``--metrics-port``; the server, or None."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    try:
        from .contrib import prometheus  # only when asked: prometheus_client is an extra
    except ImportError as exc:
        raise CommandError(f"--metrics-port: {exc}", EXIT_USAGE) from exc
    addr = getattr(args, "metrics_addr", "0.0.0.0")
    try:
        prometheus.instrument(queue)
        server, _ = prometheus.start_http_server(port, addr=addr)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--metrics-port {port}: {exc}", EXIT_USAGE) from exc
    log.info("worker: Prometheus metrics at http://%s:%d/metrics", addr, server.server_port)
    return server


def _add_app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-A",
        "--app",
        default=os.environ.get(APP_ENV),
        metavar="MODULE:QUEUE",
        help=f"the app's queue, as package.module:attribute (default: ${APP_ENV})",
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--db-timeout``, which every command takes."""
    parser.add_argument(
        "--log-level", type=_log_level, metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (worker default INFO)"
    )
    parser.add_argument(
        "--db-timeout",
        type=_timeout_seconds,
        default=5.0,
        metavar="SECONDS",
        help="give up reaching the database after this long, exit 4 (default 5)",
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

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
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
    schedules = command("schedules", "schedules with their next and last fire times (times in UTC)")
    schedules.add_argument("--json", action="store_true", help="print JSON instead of text")
    enqueue = command("enqueue", "enqueue one job and print its id")
    enqueue.add_argument("job_type", metavar="TYPE")
    enqueue.add_argument("--data", type=_json_object, default={}, metavar="JSON", help="the payload, a JSON object")
    enqueue.add_argument(
        "--fields", type=_json_object, default={}, metavar="JSON", help="your model's own fields, a JSON object"
    )
    enqueue.add_argument("--queue", default="default", help="queue name (default: default)")
    enqueue.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    enqueue.add_argument(
        "--delay", type=parse_duration_ms, metavar="DURATION", help="run no earlier than this from now"
    )
    enqueue.add_argument("--max-retries", type=int, metavar="N", help="retries after the first attempt")
    retry = command("retry", "queue failed or cancelled jobs again")
    retry.add_argument("job_ids", nargs="+", metavar="JOB_ID")
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
    if with_app:
        # Parsed by the demo itself; listed here for --help.
        sub.add_parser("demo", help="run the end-to-end demo on the embedded server (see demo --help)", add_help=False)
    return parser


# -- running ------------------------------------------------------------------


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
        from .demo import main as demo_main

        return demo_main(args_list[1:])
    parser = build_parser(prog, with_app=queue is None)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse printed the usage line and the error
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if queue is None:
            if not args.app:
                raise CommandError(f"--app is required (or set ${APP_ENV}), e.g. --app myapp.jobs:queue", EXIT_USAGE)
            queue = load_queue(args.app)
        return _dispatch(queue, args, out, err)
    except CommandError as exc:
        print(f"{prog}: error: {exc}", file=err)
        return exc.code
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        print(f"{prog}: error: unexpected {_first_line(exc)} (--log-level DEBUG shows the traceback)", file=err)
        return EXIT_FORCED


def _dispatch(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "worker":
        return run_worker_command(queue, args)
    _configure_logging(args.log_level or logging.WARNING, args.log_level is not None)
    check_database(queue, args.db_timeout)
    try:
        return ADMIN_COMMANDS[args.command](queue, args, out, err)
    except MongoJobQueueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except PyMongoError as exc:
        raise CommandError(f"database error: {_first_line(exc)}", EXIT_DATABASE) from exc


def _configure_logging(level: int, explicit: bool) -> None:
    # An app that configured logging (Flask, Django) keeps its setup unless --log-level asks otherwise.
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if explicit:
        logging.getLogger().setLevel(level)


class _JobCounter:
    """Counts finished handler calls, for ``--max-jobs``; a wrapper, not a peek into the worker.

    The call that reaches the limit waits (briefly) until the stop has begun
    before it returns, so its freed thread does not let the poller claim one
    more job in between.
    """

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit
        self.finished = 0
        self.reached = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, fn: HandlerFn) -> HandlerFn:
        def counted(job: Any) -> Any:
            try:
                return fn(job)
            finally:
                with self._lock:
                    self.finished += 1
                    reached = self.limit is not None and self.finished >= self.limit
                if reached:
                    self.reached.set()
                    self.stopping.wait(_COUNTER_HOLD_S)

        return counted


def run_worker_command(queue: PersistentJobQueue[Any], args: argparse.Namespace) -> int:
    """The ``worker`` command on a known queue: apply the options, check the database, run until stopped.

    Raises:
        CommandError: bad options, no handler, or the database unreachable.
    """
    level = getattr(args, "log_level", None)
    _configure_logging(level or logging.INFO, level is not None)
    overrides: dict[str, Any] = {}
    if args.concurrency:
        overrides["concurrency"] = args.concurrency
    if args.queues:
        overrides["queues"] = tuple(dict.fromkeys(args.queues))
    if getattr(args, "no_schedules", False):
        overrides["run_schedules"] = False
    if not len(queue.registry):
        raise CommandError("the queue has no handler registered: does the app module register them?", EXIT_IMPORT)
    counter = _JobCounter(args.max_jobs)
    try:
        queue.configure_worker(
            job_types=list(dict.fromkeys(args.job_types)) if args.job_types else None,
            wrap=counter.wrap if args.max_jobs else None,
            **overrides,
        )
    except QueueStateError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    except MongoJobQueueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    check_database(queue, getattr(args, "db_timeout", 5.0))
    until = _until(queue, counter, burst=args.burst, max_jobs=args.max_jobs)
    log.info(
        "worker: queues=%s types=%s%s%s",
        ",".join(queue.config.queues),
        ",".join(queue.worker.registry.types()),
        " burst" if args.burst else "",
        f" max-jobs={args.max_jobs}" if args.max_jobs else "",
    )
    metrics_server = _serve_metrics(queue, args)
    try:
        # A short check interval: --burst and --max-jobs stop promptly after the last job.
        code = run_worker(queue, stop_timeout=args.stop_timeout, until=until, check_interval=_CHECK_INTERVAL_S)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    log.info("worker: exiting with code %d", code)
    return code


def _until(
    queue: PersistentJobQueue[Any], counter: _JobCounter, *, burst: bool, max_jobs: Optional[int]
) -> Optional[Callable[[], bool]]:
    if not burst and not max_jobs:
        return None
    worker_id = queue.worker.owner.worker_id

    def done() -> bool:
        if counter.reached.is_set():
            log.info("worker: %d job(s) ran, the --max-jobs limit; stopping", counter.finished)
            counter.stopping.set()
            return True
        if not burst:
            return False
        try:
            # Ours first, then due: a job of ours rescheduled due-now in between is seen by the second read.
            if queue.store.admin.running_count(worker_id):
                return False
            if queue.store.admin.has_due(queue.worker.registry.types(), queue.config.queues):
                return False
        except PyMongoError as exc:
            log.warning("burst check failed, trying again: %s", _first_line(exc))
            return False
        log.info("worker: no job due and none running (burst); stopping")
        return True

    return done
