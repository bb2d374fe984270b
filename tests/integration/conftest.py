"""Integration tests use the shared wire-server fixtures of ``tests/conftest.py``, plus the failpoint here.

``TZ_NEUTRAL`` names the tests of this folder that use the queue's test
connection yet cannot be affected by its ``tz_aware`` setting, each with why:
the ``--tz-aware`` rerun skips them (tests/README.rst has the rule). Anything
not named here, and using the connection, runs both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from .models import APP_NAME

#: ``file`` or ``file::test`` (parameters left out) -> why the --tz-aware rerun cannot tell it anything.
#: Never list a test that reads a date back, nor one that runs a worker, a sweep or a schedule in this
#: process: those are where tz_aware defects were.
TZ_NEUTRAL: dict[str, str] = {
    "test_server_conformance.py": "probes the server through its own pymongo client, never the queue's",
    "test_tz_aware.py": "runs on its own tz_aware=True connection in both runs",
    "test_bad_input.py": "bad input is refused before the queue reads anything back",
    "test_cli.py::test_errors_are_one_line_with_a_distinct_exit_code": "usage errors, refused before any read",
    "test_cli.py::test_app_errors_say_what_to_pass": "--app import errors, before any database call",
    "test_cli.py::test_stop_timeout_inf_means_wait_forever_and_is_passed_on": "argument passing; no worker runs",
    # Workers in child processes, on their own connections (never tz_aware): this process only enqueues
    # and reads back what the in-process tests of the same features rerun.
    "test_limits_procs.py": "its workers are child processes; limits read in-process rerun in test_limits.py",
    "test_schedules.py::test_processes_running_the_same_schedules_enqueue_one_job_per_fire_time": (
        "its schedulers are child processes; the in-process schedule tests of the file rerun"
    ),
    # Their worker runs on the file's own counted connection (IDLE_ALIAS), never the queue's test connection:
    # the rerun would measure the same thing twice (the file's last test, on make_queue, reruns).
    "test_idle_cost.py::test_an_idle_default_worker_sends_at_most_4_commands_a_minute": "its own connection",
    "test_idle_cost.py::test_without_a_change_stream_an_idle_worker_polls_once_per_poll_maximum": "its own connection",
    "test_idle_cost.py::test_a_delayed_job_starts_within_100_ms_of_its_run_at_on_an_idle_default_worker": (
        "its own connection"
    ),
    "test_prometheus.py::test_multiprocess_mode_aggregates_worker_processes": (
        "its workers and its scrape are child processes; the in-process scrape tests of the file rerun"
    ),
}


def _check_tz_neutral_names() -> None:
    """A renamed test must not silently leave the table (and the rerun) with a stale name."""
    for key in TZ_NEUTRAL:
        file, _, test = key.partition("::")
        source = Path(__file__).parent / file
        if not source.exists() or (test and f"def {test}(" not in source.read_text()):
            raise pytest.UsageError(f"tests/integration/conftest.py TZ_NEUTRAL names {key}, which does not exist")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the ``TZ_NEUTRAL`` tests; ``tests/conftest.py`` skips them in the --tz-aware rerun."""
    _check_tz_neutral_names()
    for item in items:
        path = item.path
        if path.parent != Path(__file__).parent:
            continue
        name = getattr(item, "originalname", item.name)
        reason = TZ_NEUTRAL.get(f"{path.name}::{name}") or TZ_NEUTRAL.get(path.name)
        if reason:
            item.add_marker(pytest.mark.tz_neutral(reason=reason))


@pytest.fixture
def failpoint(raw_db) -> Iterator[Any]:
    """``arm(commands, times, **data)``: fail the next ``times`` of these commands of the queue's connection."""
    admin = raw_db.client.admin

    def arm(commands: list[str], times: int, **data: Any) -> None:
        admin.command(
            "configureFailPoint",
            "failCommand",
            mode={"times": times},
            data={"failCommands": commands, "appName": APP_NAME, **data},
        )

    try:
        admin.command("configureFailPoint", "failCommand", mode="off")
    except OperationFailure as exc:  # a mongod without enableTestCommands
        pytest.skip(f"server has no failCommand failpoint: {exc}")
    yield arm
    admin.command("configureFailPoint", "failCommand", mode="off")
