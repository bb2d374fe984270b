"""Command line entry point: ``python -m mongo_job_queue`` / ``mongo-job-queue``.

See :mod:`mongo_job_queue.cli` for the commands (``worker``, ``stats``,
``enqueue``, ``retry``, ``cancel``, ``purge``, ``demo``) and the exit codes.
"""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
