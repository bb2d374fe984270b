"""``mongo-job-queue doctor``: run the deployment checks (:mod:`mongo_job_queue.doctor`) and print one line each.

The exit code is :data:`EXIT_DOCTOR_FAILED` when any check fails; warnings
alone exit 0, so a deploy pipeline can gate on it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from pymongo.errors import PyMongoError

from ..doctor import FAIL, run_checks
from ..queue import PersistentJobQueue
from .common import EXIT_DATABASE, EXIT_OK, EXIT_REFUSED, CommandError, first_line

__all__ = ["EXIT_DOCTOR_FAILED", "run_doctor_command"]

#: A check failed: the code of a command understood but whose answer is "no".
EXIT_DOCTOR_FAILED = EXIT_REFUSED


def run_doctor_command(queue: PersistentJobQueue[Any], args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Print each check (``--json``: a list of objects) and return the exit code; unreachable: exit 4."""
    try:
        checks = run_checks(queue, args.db_timeout)
    except PyMongoError as exc:  # the ping: a server down would make every check wait its own bound
        raise CommandError(
            f"database unreachable within {args.db_timeout:g}s: {first_line(exc)}", EXIT_DATABASE
        ) from exc
    failed = any(check.status == FAIL for check in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2), file=out)
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            line = f"{check.status.upper():<5} {check.name:<{width}}  {check.detail}"
            if check.action:
                line += f"\n      {'':<{width}}  -> {check.action}"
            print(line, file=out)
    return EXIT_DOCTOR_FAILED if failed else EXIT_OK
