"""Reliability scenarios use the shared wire-server fixtures of ``tests/conftest.py``.

Do not import fixtures from another folder's conftest here: pytest would
register them twice and start a second embedded server.

Fixtures added here (see :mod:`reliability.harness` for the classes):

``executions``
    The ``executions`` collection of the test database, emptied (together
    with the workers' ``worker_status`` documents) before the test.
``server_clock``
    A callable returning the database server's current time (naive UTC),
    from the local clock corrected by its offset from ``hello.localTime``:
    the clock the queue itself uses.
``recorder``
    A :class:`~reliability.harness.Recorder` on that clock, for handlers of
    in-process queues (``behaviour_handler(recorder, worker_id)``).
``fleet``
    A :class:`~reliability.harness.Fleet` of worker processes on the test
    database (the jobs collection emptied first); every worker is killed at
    teardown, frozen ones included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from .harness import Fleet, Recorder, measure_server_clock

#: The scenarios of this folder that may share the machine (tox runs them in parallel with the other
#: folders' tests), each with why. Every other one is marked ``serial``: its bounds (recovery within a
#: lease and a sweep, a socket timeout of 500 ms, "never re-run") assume the machine to itself.
PARALLEL_SAFE: dict[str, str] = {
    "test_memory.py": "measures resident memory, not time; a slower run only takes longer",
    "test_stateful.py": "runs in this process on an injected clock",
    "test_clock_skew.py": "skews injected clocks, not the machine's",
    "test_bad_documents.py": "one worker meets malformed documents; no bound on time",
    "test_lock_redis_restart.py": "its own Redis servers, restarted on purpose; tokens are compared, not times",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this folder's scenarios ``serial``, but those named in ``PARALLEL_SAFE``."""
    here = Path(__file__).parent
    for name in PARALLEL_SAFE:
        if not (here / name).exists():
            raise pytest.UsageError(f"tests/reliability/conftest.py PARALLEL_SAFE names {name}, which does not exist")
    for item in items:
        if item.path.parent == here and item.path.name not in PARALLEL_SAFE:
            item.add_marker(pytest.mark.serial)


@pytest.fixture
def executions(raw_db):
    raw_db.executions.drop()
    raw_db.worker_status.drop()
    return raw_db.executions


@pytest.fixture
def server_clock(raw_db) -> Callable[[], datetime]:
    return measure_server_clock(raw_db.client)


@pytest.fixture
def recorder(mongodb_uri: str, db_name: str, executions, server_clock) -> Iterator[Recorder]:
    rec = Recorder(mongodb_uri, db_name, clock=server_clock)
    yield rec
    rec.close()


@pytest.fixture
def fleet(mongodb_uri: str, db_name: str, job_model, executions, server_clock, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(mongodb_uri, db_name, tmp_path / "workers", clock=server_clock)
    try:
        yield fleet
    finally:
        fleet.close()
