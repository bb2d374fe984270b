"""What every command of the command line shares: exit codes, the error that carries one, logging.

Errors are one line on stderr and a distinct exit code, never a traceback:
an operator or a supervisor (systemd, Kubernetes) must tell a typo in the
command from a database that is down.
"""

from __future__ import annotations

import logging
from typing import Any

from bson import ObjectId

from ..errors import InvalidJobIdError
from ..queue_admin import job_object_id

# The worker runner's two codes (0, 1), beside the command line's own.
from ..worker.runner import EXIT_FORCED as EXIT_FORCED
from ..worker.runner import EXIT_OK as EXIT_OK

#: Bad arguments or input (argparse's own code).
EXIT_USAGE = 2
#: ``--app`` could not be imported, is not a queue, or registers no handler.
EXIT_IMPORT = 3
#: The database could not be reached (or refused the connection).
EXIT_DATABASE = 4
#: The command was understood but not carried out: no such job, or not in a state that allows it.
EXIT_REFUSED = 5

EXIT_CODES_HELP = """\
exit codes:
  0  ok (a worker stopped gracefully, a command did what was asked)
  1  a worker was forced to stop by a second signal, or an unexpected error
  2  bad arguments or input
  3  --app could not be imported, is not a queue, or registers no handler
  4  the database is unreachable
  5  refused: no such job, not in a state that allows it, not confirmed, or a doctor check failed
"""


class CommandError(Exception):
    """A command failed in a way the user can fix: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def object_id(value: Any) -> ObjectId:
    """A job id given on the command line, or a usage error."""
    try:
        return job_object_id(value)
    except InvalidJobIdError:
        raise CommandError(f"not a job id: {value!r}", EXIT_USAGE) from None


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an error as one line of a supervisor's log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


#: The logger whose records the command line makes sure someone prints.
LIBRARY_LOGGER = "mongo_job_queue"


def configure_logging(level: int, explicit: bool) -> None:
    """Log to stderr at ``level``, unless the app configured logging; ``explicit`` levels apply anyway.

    Logging counts as configured when the library's records already reach a
    handler: one on the root logger (Flask apps, ``basicConfig``) or on
    ``mongo_job_queue`` or an ancestor (Django's ``LOGGING``). A root handler
    added then would print every line a second time.
    """
    library = logging.getLogger(LIBRARY_LOGGER)
    if not library.hasHandlers():
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if explicit:
        logging.getLogger().setLevel(level)
        if library.level != logging.NOTSET:  # a level the app set there would hide what was asked for
            library.setLevel(level)
