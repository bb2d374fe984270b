"""Integration tests use the shared wire-server fixtures of ``tests/conftest.py``, plus the failpoint here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from .models import APP_NAME


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
