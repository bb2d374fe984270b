"""The command line's logging setup: one line per record, whoever configured logging."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from mongo_job_queue.cli.common import configure_logging


@contextlib.contextmanager
def clean_logging() -> Iterator[None]:
    """No handler on the root or the library's logger, as in a fresh process; restored afterwards.

    Entered in the test body: pytest adds its capture handlers to the root logger for each phase.
    """
    root, library = logging.getLogger(), logging.getLogger("mongo_job_queue")
    saved = (root.handlers[:], root.level, library.handlers[:], library.level)
    root.handlers[:] = []
    library.handlers[:] = []
    library.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], library.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        library.setLevel(saved[3])


def test_unconfigured_logging_gets_a_root_handler() -> None:
    with clean_logging():
        configure_logging(logging.INFO, explicit=False)
        assert len(logging.getLogger().handlers) == 1
        assert logging.getLogger().level == logging.INFO


def test_logging_configured_for_the_library_prints_each_line_once(monkeypatch) -> None:
    """As Django's LOGGING does: a handler on ``mongo_job_queue``, none on the root."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)  # where a root handler from basicConfig would write
    own = io.StringIO()
    with clean_logging():
        library = logging.getLogger("mongo_job_queue")
        library.addHandler(logging.StreamHandler(own))
        library.setLevel(logging.INFO)
        configure_logging(logging.INFO, explicit=False)
        assert logging.getLogger().handlers == []
        logging.getLogger("mongo_job_queue.cli.worker").info("worker: exiting with code %d", 0)
    assert own.getvalue() == "worker: exiting with code 0\n"
    assert stream.getvalue() == ""


def test_an_explicit_level_reaches_a_library_logger_the_app_set_a_level_on() -> None:
    with clean_logging():
        library = logging.getLogger("mongo_job_queue")
        library.addHandler(logging.NullHandler())
        library.setLevel(logging.INFO)
        configure_logging(logging.DEBUG, explicit=True)
        assert logging.getLogger("mongo_job_queue.cli").isEnabledFor(logging.DEBUG)
        assert logging.getLogger().handlers == []
